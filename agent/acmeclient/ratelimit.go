package acmeclient

import (
	"errors"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
)

// DefaultRetryAfter is assumed when the CA says rateLimited without a usable
// Retry-After header.
const DefaultRetryAfter = time.Hour

// RateLimitScope says what a rateLimited answer is about, read from its
// detail: the account's new orders, the certificates of a registered domain,
// or one name (failed validations, the same set of names issued too often).
type RateLimitScope string

// The scopes of a rateLimited answer.
const (
	ScopeAccount RateLimitScope = "account"
	ScopeDomain  RateLimitScope = "domain"
	ScopeName    RateLimitScope = "name"
)

// RateLimit is what the CA said when it refused with rateLimited.
type RateLimit struct {
	Until  time.Time // from the Retry-After of the answer that refused
	Scope  RateLimitScope
	Detail string
}

// RateLimitOf reports whether err is the CA's rateLimited problem and, if so,
// until when and for which scope it refuses. The pause is the Retry-After of
// the very answer err carries (lego keeps it in acme.RateLimitedError), so
// orders running at once each get their own, never another request's.
func RateLimitOf(err error) (*RateLimit, bool) {
	var problem *acme.ProblemDetails
	if !errors.As(err, &problem) || problem.Type != acme.RateLimitedErr {
		return nil, false
	}
	rl := &RateLimit{Detail: problem.Detail, Scope: rateLimitScope(problem.Detail)}
	var limited *acme.RateLimitedError
	if errors.As(err, &limited) {
		rl.Until = retryAt(limited.RetryAfter, time.Now())
	} else {
		rl.Until = time.Now().Add(DefaultRetryAfter)
	}
	return rl, true
}

// RateLimited is RateLimitOf: it lets the manager ask the Issuer it holds.
func (c *Client) RateLimited(err error) (*RateLimit, bool) { return RateLimitOf(err) }

// retryAt reads a Retry-After value (delay-seconds or an HTTP date) with
// lego's parser. A missing, malformed, negative or past value means the CA
// gave no usable pause: DefaultRetryAfter then.
func retryAt(header string, now time.Time) time.Time {
	header = strings.TrimSpace(header)
	d, err := api.ParseRetryAfter(header)
	if err != nil || d < 0 || (d == 0 && header != "0") {
		return now.Add(DefaultRetryAfter)
	}
	return now.Add(d)
}

func rateLimitScope(detail string) RateLimitScope {
	d := strings.ToLower(detail)
	switch {
	case strings.Contains(d, "failed authorization"), strings.Contains(d, "failed validation"),
		strings.Contains(d, "exact set"), strings.Contains(d, "duplicate certificate"):
		return ScopeName
	case strings.Contains(d, "registered domain"), strings.Contains(d, "certificates") && strings.Contains(d, "issued for"):
		return ScopeDomain
	}
	return ScopeAccount
}
