package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// Exit codes of every command, documented in README.md.
const (
	// exitFailed: an operation failed (the CA, Redis, a name without a
	// certificate, an order or renewal that did not succeed).
	exitFailed = 1
	// exitUsage: bad arguments or input (unknown flags, invalid names,
	// unreadable or inconsistent PEM files); nothing was changed.
	exitUsage = 2
)

// usageErrorf is the error of a command given bad arguments or input: the
// message, formatted as fmt.Sprintf does, and exit status exitUsage.
func usageErrorf(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}

// failedf is the error of a command whose operation failed: the message,
// formatted as fmt.Sprintf does, and exit status exitFailed.
func failedf(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitFailed)
}
