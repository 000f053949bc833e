package acmeclient

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
)

func TestRetryAt(t *testing.T) {
	now := time.Now()
	for in, want := range map[string]time.Time{
		"120":  now.Add(2 * time.Minute),
		" 0 ":  now,
		"":     now.Add(DefaultRetryAfter),
		"soon": now.Add(DefaultRetryAfter),
		"-5":   now.Add(DefaultRetryAfter),
		now.Add(time.Hour).UTC().Format(http.TimeFormat):     now.Add(time.Hour),
		now.Add(-time.Hour).UTC().Format(http.TimeFormat):    now.Add(DefaultRetryAfter), // in the past
		now.Add(3 * time.Hour).UTC().Format(http.TimeFormat): now.Add(3 * time.Hour),
	} {
		// An HTTP date has whole seconds and lego reads it against the
		// clock, not against now: a second either way is the same answer.
		if got := retryAt(in, now); got.Sub(want).Abs() > time.Second {
			t.Errorf("retryAt(%q) = now%+v, want now%+v", in, got.Sub(now).Round(time.Second), want.Sub(now).Round(time.Second))
		}
	}
}

func TestRateLimitScope(t *testing.T) {
	for detail, want := range map[string]RateLimitScope{
		"too many new orders (300) from this account recently":                                   ScopeAccount,
		`too many certificates (50) already issued for "example.com" in the last 168h0m0s`:       ScopeDomain,
		`too many failed authorizations (5) for "a.example.com" in the last 1h0m0s`:              ScopeName,
		"too many certificates (5) already issued for this exact set of identifiers":             ScopeName,
		"Error creating new order :: too many certificates already issued for registered domain": ScopeDomain,
	} {
		if got := rateLimitScope(detail); got != want {
			t.Errorf("rateLimitScope(%q) = %s, want %s", detail, got, want)
		}
	}
}

// TestRateLimitOfReadsEachAnswersRetryAfter gives two rateLimited answers
// with different Retry-After values: each error yields its own pause, in
// whatever order they are read.
func TestRateLimitOfReadsEachAnswersRetryAfter(t *testing.T) {
	answer := func(retryAfter, detail string) error {
		return fmt.Errorf("obtaining certificate for a.example.test: creating the order: %w", &acme.RateLimitedError{
			ProblemDetails: &acme.ProblemDetails{Type: acme.RateLimitedErr, Detail: detail, HTTPStatus: 429},
			RetryAfter:     retryAfter,
		})
	}
	short := answer("90", "too many new orders (300) from this account recently")
	long := answer("7200", `too many certificates (50) already issued for "example.test" in the last 168h0m0s`)
	now := time.Now()
	for _, tc := range []struct {
		err   error
		wait  time.Duration
		scope RateLimitScope
	}{{long, 2 * time.Hour, ScopeDomain}, {short, 90 * time.Second, ScopeAccount}, {long, 2 * time.Hour, ScopeDomain}} {
		rl, ok := RateLimitOf(tc.err)
		if !ok || rl.Until.Sub(now.Add(tc.wait)).Abs() > time.Second || rl.Scope != tc.scope {
			t.Errorf("RateLimitOf(%v) = %+v, %v; want until now+%s, scope %s", tc.err, rl, ok, tc.wait, tc.scope)
		}
	}
	// A rateLimited problem that came without its header (status not 429)
	// gets the default pause.
	rl, ok := RateLimitOf(&acme.ProblemDetails{Type: acme.RateLimitedErr, Detail: "slow down", HTTPStatus: 403})
	if !ok || rl.Until.Sub(now.Add(DefaultRetryAfter)).Abs() > time.Second {
		t.Errorf("rateLimited without Retry-After: %+v, %v; want the default pause", rl, ok)
	}
	if _, ok := RateLimitOf(fmt.Errorf("x: %w", &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:unauthorized"})); ok {
		t.Error("an unauthorized problem is not a rate limit")
	}
}
