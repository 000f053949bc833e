package policy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// askServer answers the ask URL: allowed names get 200, others 404.
type askServer struct {
	mu      sync.Mutex
	allowed map[string]bool
	asked   atomic.Int64
}

func (a *askServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.asked.Add(1)
	a.mu.Lock()
	ok := a.allowed[r.URL.Query().Get("domain")]
	a.mu.Unlock()
	if !ok {
		http.Error(w, "no", http.StatusNotFound)
		return
	}
	fmt.Fprintln(w, "yes")
}

func TestDeciderSources(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	ctx := context.Background()
	static, _ := ParsePolicy([]string{"*.static.example"})
	asker := &askServer{allowed: map[string]bool{"asked.example.net": true}}
	srv := httptest.NewServer(asker)
	defer srv.Close()
	clock := testenv.NewClock(time.Now())
	ask, err := NewAsk(AskConfig{URL: srv.URL + "/check?token=x", Timeout: 2 * time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecider(DeciderConfig{Store: st, Static: static, Ask: ask})
	decide := func(name string) Verdict {
		t.Helper()
		v, err := d.Decide(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := decide("a.static.example"); !v.Allowed || v.Source != "static" {
		t.Errorf("static rule: %+v", v)
	}
	if v := decide("asked.example.net"); !v.Allowed || v.Source != "ask" {
		t.Errorf("ask allows: %+v", v)
	}
	if v := decide("asked.example.net"); !v.Allowed || v.Source != "ask-cache" || asker.asked.Load() != 1 {
		t.Errorf("second decision: %+v after %d questions; want the cached answer", v, asker.asked.Load())
	}
	// A refusal is cached for the fleet: the ask URL is not asked again.
	if v := decide("nobody.example.org"); v.Allowed || v.Unavailable {
		t.Errorf("unknown name: %+v", v)
	}
	before := asker.asked.Load()
	if v := decide("nobody.example.org"); v.Allowed || v.Source != "negative-cache" || asker.asked.Load() != before {
		t.Errorf("repeated unknown name: %+v, %d questions; want the negative cache", v, asker.asked.Load()-before)
	}
	// The allowlist overrides the cached refusal at once.
	if _, err := st.AddAllowRules(ctx, "*.example.org"); err != nil {
		t.Fatal(err)
	}
	if v := decide("nobody.example.org"); !v.Allowed || v.Source != "allowlist" {
		t.Errorf("after allow add: %+v", v)
	}

	// Ask URL down: refused for now, not cached, and not asked again during
	// the pause, so a flood cannot hammer it.
	srv.Close()
	if v := decide("down-1.example.com"); v.Allowed || !v.Unavailable {
		t.Fatalf("ask down: %+v, want unavailable", v)
	}
	if v := decide("down-2.example.com"); !v.Unavailable {
		t.Errorf("ask down, second name: %+v", v)
	}
	if dn, _ := st.Denied(ctx, "down-1.example.com"); dn != nil {
		t.Errorf("an unavailable answer was cached as a refusal: %+v", dn)
	}
	// Back after the pause: asked again.
	srv2 := httptest.NewServer(asker)
	defer srv2.Close()
	ask2, _ := NewAsk(AskConfig{URL: srv2.URL, Clock: clock})
	ask2.pause, ask2.downUntil = ask.pause, ask.downUntil
	d.cfg.Ask = ask2
	asker.mu.Lock()
	asker.allowed["down-1.example.com"] = true
	asker.mu.Unlock()
	if v := decide("down-1.example.com"); !v.Unavailable {
		t.Errorf("within the pause: %+v, want unavailable without asking", v)
	}
	clock.Add(2 * time.Minute)
	if v := decide("down-1.example.com"); !v.Allowed {
		t.Errorf("after the pause: %+v, want allowed", v)
	}
}

func TestNewAskRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "ftp://x/", "localhost:8080", "http://"} {
		if _, err := NewAsk(AskConfig{URL: u}); err == nil {
			t.Errorf("NewAsk(%q): want an error", u)
		}
	}
}

func TestAskRedirectRefuses(t *testing.T) {
	// A redirect (to a login page, say) is a 3xx answer: it refuses, it
	// does not allow by the 200 of the page it leads to.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			fmt.Fprintln(w, "please log in")
			return
		}
		http.Redirect(w, r, "/login", http.StatusFound)
	}))
	defer srv.Close()
	ask, err := NewAsk(AskConfig{URL: srv.URL + "/check"})
	if err != nil {
		t.Fatal(err)
	}
	if allowed, err := ask.Allows(context.Background(), "shop.example.com"); allowed || err != nil {
		t.Errorf("redirected ask: allowed %v, error %v; want a refusal", allowed, err)
	}
}

func TestAskErrorKeepsTheURLOut(t *testing.T) {
	// The error is logged and stored in the failure record: the URL's token must not be in it.
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	ask, err := NewAsk(AskConfig{URL: srv.URL + "/check?token=s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ask.Allows(context.Background(), "shop.example.com")
	if !errors.Is(err, ErrAskUnavailable) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("ask down: %v; want ErrAskUnavailable without the URL's token", err)
	}
}
