package main

// Exit codes of every command, documented in README.md.
const (
	// exitFailed: an operation failed (the CA, Redis, a name without a
	// certificate, an order or renewal that did not succeed).
	exitFailed = 1
	// exitUsage: bad arguments or input (unknown flags, invalid names,
	// unreadable or inconsistent PEM files); nothing was changed.
	exitUsage = 2
)
