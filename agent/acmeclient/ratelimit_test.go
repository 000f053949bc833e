package acmeclient

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"120":                           now.Add(2 * time.Minute),
		" 0 ":                           now,
		"Wed, 25 Nov 2026 13:00:00 GMT": now.Add(time.Hour),
		"Wed, 25 Nov 2026 11:00:00 GMT": now.Add(DefaultRetryAfter), // in the past
		"":                              now.Add(DefaultRetryAfter),
		"soon":                          now.Add(DefaultRetryAfter),
		"-5":                            now.Add(DefaultRetryAfter),
	} {
		if got := parseRetryAfter(in, now); !got.Equal(want) {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", in, got, want)
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

// TestTrackerCapturesRetryAfter sends a request through the tracking
// transport to a server answering 429 with Retry-After, and reads it back
// through RateLimited for a rateLimited problem.
func TestTrackerCapturesRetryAfter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "90")
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders","status":429}`)
	}))
	defer srv.Close()
	client, tracker := trackRateLimits(&http.Client{})
	now := time.Now()
	tracker.now = func() time.Time { return now }
	resp, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c := &Client{rateLimits: tracker}
	problem := &acme.ProblemDetails{Type: acme.RateLimitedErr, Detail: "too many new orders", HTTPStatus: 429}
	rl, ok := c.RateLimited(fmt.Errorf("creating the order: %w", problem))
	if !ok || !rl.Until.Equal(now.Add(90*time.Second)) || rl.Scope != ScopeAccount {
		t.Errorf("RateLimited = %+v, %v; want until now+90s, account scope", rl, ok)
	}
	if _, ok := c.RateLimited(fmt.Errorf("x: %w", &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:unauthorized"})); ok {
		t.Error("an unauthorized problem is not a rate limit")
	}
}
