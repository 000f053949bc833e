package acmeclient

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-acme/lego/v4/acme"
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
	Until  time.Time // from the response's Retry-After
	Scope  RateLimitScope
	Detail string
}

// rateLimitTracker wraps the transport to the CA and remembers the
// Retry-After of the latest 429 answer: lego's ProblemDetails does not carry
// the header, so it is captured where the response passes.
type rateLimitTracker struct {
	base http.RoundTripper
	now  func() time.Time

	mu    sync.Mutex
	until time.Time
}

func (t *rateLimitTracker) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		until := parseRetryAfter(resp.Header.Get("Retry-After"), t.now())
		t.mu.Lock()
		t.until = until
		t.mu.Unlock()
	}
	return resp, err
}

// parseRetryAfter reads delay-seconds or an HTTP date (RFC 9110 10.2.3).
func parseRetryAfter(v string, now time.Time) time.Time {
	v = strings.TrimSpace(v)
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
		return now.Add(time.Duration(secs) * time.Second)
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return at
	}
	return now.Add(DefaultRetryAfter)
}

// trackRateLimits returns a copy of client whose transport records
// Retry-After, and the tracker.
func trackRateLimits(client *http.Client) (*http.Client, *rateLimitTracker) {
	base := client.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	t := &rateLimitTracker{base: base, now: time.Now}
	c := *client
	c.Transport = t
	return &c, t
}

// RateLimited reports whether err is the CA's rateLimited problem and, if
// so, until when and for which scope it refuses.
func (c *Client) RateLimited(err error) (*RateLimit, bool) {
	var problem *acme.ProblemDetails
	if !errors.As(err, &problem) || problem.Type != acme.RateLimitedErr {
		return nil, false
	}
	rl := &RateLimit{Detail: problem.Detail, Scope: rateLimitScope(problem.Detail)}
	if c.rateLimits != nil {
		c.rateLimits.mu.Lock()
		rl.Until = c.rateLimits.until
		c.rateLimits.mu.Unlock()
	}
	if rl.Until.IsZero() {
		rl.Until = time.Now().Add(DefaultRetryAfter)
	}
	return rl, true
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
