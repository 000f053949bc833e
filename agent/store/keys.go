// Package store is the only code of the agent that talks to Redis. Every key it
// touches is built by Keys and described in docs/redis-schema.md.
package store

import (
	"crypto/sha256"
	"encoding/hex"
)

// DefaultPrefix is the key prefix used when none is configured.
const DefaultPrefix = "certagent:"

// Keys builds every Redis key of the schema. The zero value uses DefaultPrefix.
type Keys struct {
	// Prefix starts every key. Default: DefaultPrefix.
	Prefix string
}

func (k Keys) prefix() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return k.Prefix
}

// Cert is the hash holding the certificate record served for name.
func (k Keys) Cert(name string) string { return k.prefix() + "cert:" + name }

// Token is the string holding the HTTP-01 key authorization for token under name.
func (k Keys) Token(name, token string) string { return k.prefix() + "token:" + name + ":" + token }

// Issuing tells nginx whether an order for name runs ("issuing") or will not
// run now ("refused <reason>"), so a first handshake waits only for the former.
func (k Keys) Issuing(name string) string { return k.prefix() + "issuing:" + name }

// PeerNonce remembers a nonce a peer site signed a request with, so the same
// request cannot be replayed while its timestamp is still accepted.
func (k Keys) PeerNonce(site, nonce string) string {
	return k.prefix() + "peer-nonce:" + site + ":" + nonce
}

// Tombstones lists the certificates deleted or revoked here, so neither peer
// pushes nor anti-entropy bring them back.
func (k Keys) Tombstones() string { return k.prefix() + "tombstones" }

// Peers holds each agent's view of the peer sites, for `certagent peers`.
func (k Keys) Peers() string { return k.prefix() + "peers" }

// Requests is the stream of names that nginx saw without a certificate.
func (k Keys) Requests() string { return k.prefix() + "requests" }

// Changes is the stream of names whose certificate was written or deleted;
// nginx workers follow it to drop what they cached.
func (k Keys) Changes() string { return k.prefix() + "changes" }

// Events is the stream of what the agents did, for operators to follow.
func (k Keys) Events() string { return k.prefix() + "events" }

// Refusals counts the names the agents refused without an event each
// (no rule allows them, or they are not valid names), for `certagent status`.
func (k Keys) Refusals() string { return k.prefix() + "refusals" }

// Expiry is the sorted set of primary names scored by not-after.
func (k Keys) Expiry() string { return k.prefix() + "expiry" }

// Renewals is the renewal schedule: primary names scored by when an agent
// next looks at them (renewal due, renewal information to fetch, a retry).
func (k Keys) Renewals() string { return k.prefix() + "renewals" }

// Renewal is the renewal state of the certificate indexed under name: the
// CA's window, the chosen time, failures.
func (k Keys) Renewal(name string) string { return k.prefix() + "renewal:" + name }

// RenewalFailures indexes the names whose last renewal failed, by the time
// of that failure, so status shows them without walking the schedule.
func (k Keys) RenewalFailures() string { return k.prefix() + "renewal-failures" }

// Lock is the lease that makes one agent at a time order a certificate for name.
func (k Keys) Lock(name string) string { return k.prefix() + "lock:" + name }

// Order is the ACME order running for name under its lease, so that the
// agent taking the name over after a crash resumes it.
func (k Keys) Order(name string) string { return k.prefix() + "order:" + name }

// Fence is the fencing counter of name: every lease taken on Lock(name)
// draws the next value, and a certificate write carrying an older value is
// refused.
func (k Keys) Fence(name string) string { return k.prefix() + "fence:" + name }

// Account is the hash holding the ACME account for a directory URL and e-mail.
func (k Keys) Account(directoryURL, email string) string {
	return k.prefix() + "account:" + AccountID(directoryURL, email)
}

// AccountLock is held by the agent that registers the account of (directory
// URL, e-mail) again after the CA lost it, so the fleet registers once.
func (k Keys) AccountLock(directoryURL, email string) string {
	return k.prefix() + "account-lock:" + AccountID(directoryURL, email)
}

// AccountID names an ACME account by the CA and the e-mail it was registered with.
func AccountID(directoryURL, email string) string {
	sum := sha256.Sum256([]byte(directoryURL + "\n" + email))
	return hex.EncodeToString(sum[:16])
}

// Allow is the set of allow rules managed with `certagent allow`: exact names
// and "*.parent" suffix rules.
func (k Keys) Allow() string { return k.prefix() + "allow" }

// AllowGeneration counts changes of the allowlist; a cached denial made under
// an older generation is ignored, so `allow add` takes effect at once.
func (k Keys) AllowGeneration() string { return k.prefix() + "allow-generation" }

// Rules is the hash of the allow rules the agents publish for nginx, which
// judges names by them without asking an agent.
func (k Keys) Rules() string { return k.prefix() + "rules" }

// Alive is refreshed by every running agent with a short TTL: while it
// exists an agent takes names from the requests stream.
func (k Keys) Alive() string { return k.prefix() + "alive" }

// Denied is the shared negative cache: name was refused and is not evaluated
// again until the key expires or the allowlist changes.
func (k Keys) Denied(name string) string { return k.prefix() + "denied:" + name }

// Ask caches an allowing answer of the ask URL for name.
func (k Keys) Ask(name string) string { return k.prefix() + "ask:" + name }

// Failure holds the failure memory of name: last error, attempts, next attempt.
func (k Keys) Failure(name string) string { return k.prefix() + "failure:" + name }

// Failures indexes the names with a failure record by their next attempt.
func (k Keys) Failures() string { return k.prefix() + "failures" }

// Budget is the sliding window of events counted against one rate budget:
// kind "orders" (subject: account id), "certs" (registered domain) or
// "failed" (name).
func (k Keys) Budget(kind, subject string) string {
	return k.prefix() + "budget:" + kind + ":" + subject
}

// BudgetHeld holds the events of Budget(kind, subject) whose order still runs:
// member as in Budget, score: when it is given back unless confirmed.
func (k Keys) BudgetHeld(kind, subject string) string {
	return k.prefix() + "budget-held:" + kind + ":" + subject
}

// Park marks a budget scope the CA refused with rateLimited, until its Retry-After.
func (k Keys) Park(kind, subject string) string { return k.prefix() + "park:" + kind + ":" + subject }

// CADown is present while the CA of directoryURL is down for the fleet: the
// first agent that saw it fail wrote it, and the agents probe the CA until it
// answers and the key is deleted.
func (k Keys) CADown(directoryURL string) string { return k.prefix() + "ca-down:" + CAID(directoryURL) }

// CAID names a CA by its directory URL.
func CAID(directoryURL string) string {
	sum := sha256.Sum256([]byte(directoryURL))
	return hex.EncodeToString(sum[:16])
}

// CAWaiting holds the names that wait for a CA to come back, with the node
// that requested them; they go back to the requests stream when it does.
func (k Keys) CAWaiting() string { return k.prefix() + "ca-waiting" }
