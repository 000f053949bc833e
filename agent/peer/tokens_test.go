package peer

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

func TestTokensFollowTheRule(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	tokenAt := func(s *testSite, token string) string {
		return s.rdb.Get(ctx, s.st.Keys().Token("t.example.com", token)).Val()
	}

	// Every site up: every site holds the token, and cleanup removes it
	// everywhere.
	tokens := a.fleet.Tokens(a.st)
	if err := tokens.PutToken(ctx, "t.example.com", "tok1", "tok1.thumb"); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if v := tokenAt(s, "tok1"); v != "tok1.thumb" {
			t.Errorf("site %s holds %q", s.id, v)
		}
		if ttl := s.rdb.TTL(ctx, s.st.Keys().Token("t.example.com", "tok1")).Val(); ttl <= 0 || ttl > store.TokenTTL {
			t.Errorf("site %s: TTL %s", s.id, ttl)
		}
	}
	if err := tokens.DeleteToken(ctx, "t.example.com", "tok1"); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if v := tokenAt(s, "tok1"); v != "" {
			t.Errorf("site %s still holds %q after cleanup", s.id, v)
		}
	}

	// c down: a majority (a and b) is enough for the default rule...
	c.down()
	if err := tokens.PutToken(ctx, "t.example.com", "tok2", "tok2.thumb"); err != nil {
		t.Fatalf("majority with c down: %v", err)
	}
	if tokenAt(a, "tok2") == "" || tokenAt(b, "tok2") == "" {
		t.Error("the token is not held at a and b")
	}
	if st := a.fleet.States(); st[1].ID != "c" || st[1].Up || st[1].LastError == "" || !st[0].Up {
		t.Errorf("states after the push: %+v", st)
	}

	// ...not for "all", which withdraws the token from a and b.
	all := a.fleet.cfg
	all.TokenRule = TokenRuleAll
	strict, err := NewFleet(all)
	if err != nil {
		t.Fatal(err)
	}
	err = strict.Tokens(a.st).PutToken(ctx, "t.example.com", "tok3", "tok3.thumb")
	if err == nil || !strings.Contains(err.Error(), "not reached: c") {
		t.Fatalf("rule all with c down: %v, want an error naming c", err)
	}
	if tokenAt(a, "tok3") != "" || tokenAt(b, "tok3") != "" {
		t.Error("the token was not withdrawn after the rule failed")
	}

	// b down too: no majority either.
	b.down()
	if err := tokens.PutToken(ctx, "t.example.com", "tok4", "tok4.thumb"); err == nil ||
		!strings.Contains(err.Error(), "not reached: b, c") {
		t.Errorf("majority with b and c down: %v", err)
	}
	if tokenAt(a, "tok4") != "" {
		t.Error("the token was not withdrawn locally")
	}
}

// TestTokenPushesTakeThePeerTimeout: the CA client bounds a token's
// publication more tightly than --peer-timeout; a peer that answers within
// the peer timeout still counts toward the token rule.
func TestTokenPushesTakeThePeerTimeout(t *testing.T) {
	watchdog(t, time.Minute)
	sites := startSites(t, func(c *Config) { c.Timeout, c.TokenRule = 5*time.Second, TokenRuleAll }, "a", "b")
	a, b := sites["a"], sites["b"]
	b.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, PathPrefix+"tokens/") {
			time.Sleep(500 * time.Millisecond) // a slow link
		}
		b.srv.ServeHTTP(w, r)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := a.fleet.Tokens(a.st).PutToken(ctx, "slow.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatalf("b answers within the peer timeout: %v", err)
	}
	if v := b.rdb.Get(context.Background(), b.st.Keys().Token("slow.example.com", "tok")).Val(); v != "tok.thumb" {
		t.Errorf("b holds %q", v)
	}

	// A caller that gives up (the order is cancelled) stops the pushes.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if err := a.fleet.Tokens(a.st).PutToken(ctx, "slow.example.com", "tok2", "tok2.thumb"); err == nil {
		t.Error("a cancelled push succeeded")
	}
}

// TestTokenCleanupSkipsPeersKnownDown: removing a token after validation is
// best effort at the peers (it expires there anyway), so a peer known down
// is not waited for: the order would wait for its timeout after every
// authorization.
func TestTokenCleanupSkipsPeersKnownDown(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.ProbeInterval = time.Hour }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	tokens := a.fleet.Tokens(a.st)
	if err := tokens.PutToken(ctx, "t.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatal(err)
	}
	c.down()
	a.fleet.probe(ctx)
	c.up(t)
	var deletes atomic.Int64
	c.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			deletes.Add(1)
		}
		c.srv.ServeHTTP(w, r)
	})
	if err := tokens.DeleteToken(ctx, "t.example.com", "tok"); err != nil {
		t.Fatal(err)
	}
	if n := deletes.Load(); n != 0 {
		t.Errorf("c, known down, was asked %d times to remove the token", n)
	}
	for _, s := range []*testSite{a, b} {
		if s.rdb.Exists(ctx, s.st.Keys().Token("t.example.com", "tok")).Val() != 0 {
			t.Errorf("site %s still holds the token", s.id)
		}
	}
}
