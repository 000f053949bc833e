package acmeclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/go-acme/lego/v4/acme"

	"github.com/certagent/certagent/agent/internal/testenv"
)

func TestAccountLostTellsAccountProblemsFromOthers(t *testing.T) {
	problem := func(typ, detail string) error {
		return fmt.Errorf("obtaining certificate for a.example: creating the order: %w",
			&acme.ProblemDetails{Type: typ, Detail: detail, HTTPStatus: 400})
	}
	for _, c := range []struct {
		err  error
		lost bool
	}{
		{problem(problemAccountDoesNotExist, `Account "https://ca/acct/1" not found`), true},
		{problem(problemUnauthorized, "Account has been deactivated"), true},
		{problem(problemUnauthorized, `Account is not valid, has status "revoked"`), true},
		{problem(problemUnauthorized, "No account found corresponding to public key authenticating this request"), true},
		// A failed validation is unauthorized too.
		{problem(problemUnauthorized, "Invalid response from http://a.example/.well-known/acme-challenge/x: 404"), false},
		{problem(problemUnauthorized, "Account that authenticated the request does not own the specified order"), false},
		{problem(problemUnauthorized, "requester account did not request the certificate being replaced by this order"), false},
		{problem(acme.RateLimitedErr, "too many new accounts"), false},
		{errors.New("connection refused"), false},
	} {
		if got := AccountLost(c.err); got != c.lost {
			t.Errorf("AccountLost(%v) = %t, want %t", c.err, got, c.lost)
		}
	}
}

// A CA restarted with no accounts (and new roots): the order that finds the
// account gone registers it again, with the same key, and is ordered again
// instead of failing; every later order uses the new account.
func TestLazyRegistersAgainAfterTheCARestarts(t *testing.T) {
	pebble, tokens := startCA(t)
	ctx := context.Background()
	accounts := &memAccounts{}
	var mu sync.Mutex
	var changes []AccountChange
	cfg := Config{DirectoryURL: pebble.DirectoryURL, Email: "ops@example.test", CARootFiles: []string{pebble.CARootsFile},
		AccountChanged: func(ch AccountChange) { mu.Lock(); changes = append(changes, ch); mu.Unlock() }}
	lazy := NewLazy(cfg, accounts, NewHTTP01Provider(tokens, 0))
	if _, err := lazy.Obtain(ctx, []string{"before.example.test"}); err != nil {
		t.Fatal(err)
	}
	oldURI, oldKey := accounts.uri, accounts.key
	oldRoots := pebble.Roots(t)

	pebble.Restart(t)
	// Several orders at once: one registration between them.
	var wg sync.WaitGroup
	certs := make([]*Certificate, 3)
	errs := make([]error, 3)
	for i := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			certs[i], errs[i] = lazy.Obtain(ctx, []string{fmt.Sprintf("after%d.example.test", i)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("order %d after the CA restarted: %v", i, err)
		}
		leaf, intermediates := parseChain(t, certs[i].FullChain)
		name := fmt.Sprintf("after%d.example.test", i)
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pebble.Roots(t), Intermediates: intermediates}); err != nil {
			t.Errorf("%s does not verify against the restarted CA's root: %v", name, err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: oldRoots, Intermediates: intermediates}); err == nil {
			t.Errorf("%s verifies against the old root: the CA did not really restart", name)
		}
	}
	if n := pebble.AccountsCreated(t); n != 1 {
		t.Errorf("%d accounts registered at the restarted CA, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 1 {
		t.Fatalf("%d account changes reported, want 1: %+v", len(changes), changes)
	}
	ch := changes[0]
	if !ch.Registered || ch.Found || ch.NewKey || ch.OldURI != oldURI || ch.NewURI != accounts.uri || ch.NewURI == oldURI ||
		!AccountLost(ch.Cause) || ch.Directory != pebble.DirectoryURL {
		t.Errorf("account change %+v; stored uri %s, old %s", ch, accounts.uri, oldURI)
	}
	if accounts.key != oldKey {
		t.Error("the key was replaced although the CA took it again")
	}
	status, err := lazy.Account(ctx)
	if err != nil || status.Status != acme.StatusValid || status.URI != accounts.uri {
		t.Errorf("the CA's view of the account: %+v %v", status, err)
	}
}

// An account the CA holds but no longer takes (deactivated) is replaced by
// one under a new key; LookupAccount tells a key the CA does not know.
func TestRegisterAgainReplacesAKeyTheCARefuses(t *testing.T) {
	p := startPebbleClient(t)
	pebble, accounts, cfg, client := p.pebble, p.accounts, p.cfg, p.client
	ctx := context.Background()
	status, err := LookupAccount(ctx, cfg, accounts.key)
	if err != nil || status.URI != client.AccountURI() || status.Status != acme.StatusValid {
		t.Fatalf("LookupAccount of the registered key: %+v %v", status, err)
	}
	if err := client.core.Accounts.Deactivate(client.AccountURI()); err != nil {
		t.Fatal(err)
	}
	reg, err := client.registerAgain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reg.newKey || reg.found || reg.keyPEM == accounts.key || reg.uri == "" || reg.uri == client.AccountURI() {
		t.Errorf("registration after deactivation: new key %t found %t uri %s (old %s)", reg.newKey, reg.found, reg.uri, client.AccountURI())
	}
	status, err = LookupAccount(ctx, cfg, reg.keyPEM)
	if err != nil || status.URI != reg.uri || status.Status != acme.StatusValid {
		t.Errorf("LookupAccount of the new key: %+v %v", status, err)
	}

	pebble.Restart(t)
	if _, err := LookupAccount(ctx, cfg, reg.keyPEM); !errors.Is(err, ErrNoAccount) {
		t.Errorf("LookupAccount at a CA that lost every account: %v, want ErrNoAccount", err)
	}
	if n := pebble.AccountsCreated(t); n != 0 {
		t.Errorf("LookupAccount created %d accounts", n)
	}
}

// Two agents sharing one stored account, at a CA that lost its accounts but
// gives the key its old URL again when it is registered again (the CA
// proxy's reset): one registration for both, and both agents' orders go
// through.
func TestTwoAgentsRegisterAgainOnceWhenTheCAKeepsTheURL(t *testing.T) {
	s := startStrictCA(t)
	ctx := context.Background()
	if _, err := s.client.Obtain(ctx, []string{"before.example.test"}); err != nil {
		t.Fatal(err)
	}
	oldURI := s.accounts.uri
	var mu sync.Mutex
	var changes []AccountChange
	cfg := Config{DirectoryURL: s.proxy.DirectoryURL, CARootFiles: []string{s.proxy.CARootsFile},
		AccountChanged: func(ch AccountChange) { mu.Lock(); changes = append(changes, ch); mu.Unlock() }}
	agents := []*Lazy{NewLazy(cfg, s.accounts, NewHTTP01Provider(s.tokens, 0)), NewLazy(cfg, s.accounts, NewHTTP01Provider(s.tokens, 0))}
	for _, a := range agents {
		if err := a.Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}

	s.proxy.ResetAccounts()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = agents[i%2].Obtain(ctx, []string{fmt.Sprintf("after%d.example.test", i)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("order %d after the reset: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	registered := 0
	for _, ch := range changes {
		if ch.Registered {
			registered++
		}
	}
	if registered != 1 || len(changes) != 2 || s.accounts.generation != 1 {
		t.Errorf("%d registrations, %d account changes, generation %d: want 1 registration, seen by both agents, generation 1: %+v",
			registered, len(changes), s.accounts.generation, changes)
	}
	if s.accounts.uri != oldURI {
		t.Errorf("stored URL %s, want the CA's old one %s", s.accounts.uri, oldURI)
	}
}

// An account lost while the CA fails (5xx at its account endpoint) is an
// outage, not the name's failure: the order that found it lost waits for the
// CA like any order the CA failed, and registers again once it answers.
func TestAccountLostWhileTheCAFailsIsAnOutage(t *testing.T) {
	s := startStrictCA(t)
	ctx := context.Background()
	lazy := NewLazy(Config{DirectoryURL: s.proxy.DirectoryURL, CARootFiles: []string{s.proxy.CARootsFile}},
		s.accounts, NewHTTP01Provider(s.tokens, 0))
	if _, err := lazy.Obtain(ctx, []string{"before.example.test"}); err != nil {
		t.Fatal(err)
	}
	s.proxy.ResetAccounts()
	s.proxy.Inject(testenv.Fault{Kind: testenv.FaultServerInternal, Path: testenv.PathNewAccount})
	_, err := lazy.Obtain(ctx, []string{"during.example.test"})
	if !IsOutage(err) || AsOutage(err, s.proxy.DirectoryURL) == nil {
		t.Fatalf("an order whose account could not be registered again while the CA failed: %v; want an outage", err)
	}
	if !strings.HasPrefix(err.Error(), "CA failing: HTTP 500") {
		t.Errorf("the outage is not named first: %v", err)
	}
	s.proxy.ClearFaults()
	if _, err := lazy.Obtain(ctx, []string{"after.example.test"}); err != nil {
		t.Errorf("an order once the CA answers again: %v", err)
	}
}
