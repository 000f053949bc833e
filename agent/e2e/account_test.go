package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// accountEvents counts the account_registered events in the events stream.
func accountEvents(t *testing.T, s *faultStack) int {
	t.Helper()
	msgs, err := s.redis.Client.XRange(context.Background(), "certagent:events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range msgs {
		if m.Values["type"] == "account_registered" {
			n++
		}
	}
	return n
}

// A CA restarted with a new root and no accounts (as after `docker compose
// down` and `up`): two agents keep their stored account URL until an order
// hits accountDoesNotExist; then one of them registers the account again for
// both, the orders that hit the error are ordered again, and every name
// requested after the restart is issued by the new root, with no manual step
// and no failure left.
func TestCARestartIsFollowedByNewIssuance(t *testing.T) {
	s := startFaultStack(t, faultOptions{})
	st := store.New(s.redis.Client, store.Keys{})
	ctx := context.Background()
	var agents []*agentProc
	for _, name := range []string{"agent-0", "agent-1"} {
		agents = append(agents, s.newAgent(t, name, "--allow", "*.reset.test", "--workers", "4"))
	}
	before := makeNames("b", "reset.test", 4)
	s.request(t, before)
	s.waitAllStored(t, st, before, 60*time.Second)
	_, oldURI, _, err := st.LoadAccount(ctx, s.proxy.DirectoryURL, "ops@example.test")
	if err != nil || oldURI == "" {
		t.Fatalf("stored account before the restart: %q %v", oldURI, err)
	}
	oldRoots := s.pebble.Roots(t)

	s.pebble.Restart(t)
	after := makeNames("a", "reset.test", 20)
	s.request(t, after)
	took := s.waitAllStored(t, st, after, 90*time.Second) // checked against the new root
	s.dog.check(t)

	if n := s.pebble.AccountsCreated(t); n != 1 {
		t.Errorf("%d accounts registered at the restarted CA, want 1 for the fleet", n)
	}
	if n := accountEvents(t, s); n != 1 {
		t.Errorf("%d account_registered events, want 1", n)
	}
	_, newURI, _, err := st.LoadAccount(ctx, s.proxy.DirectoryURL, "ops@example.test")
	if err != nil || newURI == "" || newURI == oldURI {
		t.Errorf("stored account after the restart: %q (before %q) %v", newURI, oldURI, err)
	}
	registered, adopted, mentions := 0, 0, 0
	for _, a := range agents {
		registered += a.logCount("the CA lost the ACME account: registered it again")
		adopted += a.logCount("using the ACME account another agent registered again")
		mentions += a.logCount(newURI)
	}
	if registered != 1 || mentions == 0 {
		t.Errorf("%d agents logged a registration (want 1), %d lines name the new account %s", registered, mentions, newURI)
	}
	for _, n := range after {
		if _, err := st.GetFailure(ctx, n); err == nil {
			t.Errorf("%s has a failure record: the order that hit the lost account failed instead of being retried", n)
		}
	}
	// nginx serves the new certificates, which only the new root vouches for.
	waitServedReal(t, s, after[0])
	chain, err := handshakeAt(s.nginx.HTTPSAddr, after[0])
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: after[0], Roots: oldRoots, Intermediates: inter}); err == nil {
		t.Error("the certificate served after the restart verifies against the old root: the CA did not really restart")
	}
	t.Logf("after the CA restart: %d names issued in %s; %d registration, %d adoptions by the other agent",
		len(after), took.Round(100*time.Millisecond), registered, adopted)
}

// The account commands ask the CA: show tells what the CA holds for the
// stored key (creating nothing), register registers it, and registers it
// again when the CA has lost it.
func TestAccountCommandsAskTheCA(t *testing.T) {
	s := startStack(t)
	if _, errOut, code := s.cli(t, "account", "show"); code != 1 || !strings.Contains(errOut, "no account stored") {
		t.Errorf("account show before any registration: exit %d: %s", code, errOut)
	}
	out, errOut, code := s.cli(t, "account", "register")
	if code != 0 || !strings.Contains(out, "registered:  true") || !strings.Contains(out, "valid") {
		t.Fatalf("account register: exit %d:\n%s%s", code, out, errOut)
	}
	if n := s.pebble.AccountsCreated(t); n != 1 {
		t.Errorf("%d accounts at the CA after register, want 1", n)
	}
	type view struct {
		URI        string `json:"uri"`
		Registered bool   `json:"registered"`
		CAStatus   string `json:"ca_status"`
		CAURI      string `json:"ca_uri"`
		CAError    string `json:"ca_error"`
	}
	show := func() (view, int) {
		t.Helper()
		out, errOut, code := s.cli(t, "account", "show", "--json")
		var v view
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("account show --json: exit %d, %v:\n%s%s", code, err, out, errOut)
		}
		return v, code
	}
	v, code := show()
	if code != 0 || !v.Registered || v.CAStatus != "valid" || v.CAURI != v.URI || v.URI == "" {
		t.Errorf("account show: exit %d, %+v", code, v)
	}
	oldURI := v.URI
	if out, _, _ := s.cli(t, "account", "register"); !strings.Contains(out, oldURI) || s.pebble.AccountsCreated(t) != 1 {
		t.Errorf("a second register created an account or changed the URL:\n%s", out)
	}

	s.pebble.Restart(t)
	v, code = show()
	if code != 1 || v.Registered || v.CAStatus != "none" || v.URI != oldURI {
		t.Errorf("account show after the CA lost the account: exit %d, %+v", code, v)
	}
	if n := s.pebble.AccountsCreated(t); n != 0 {
		t.Errorf("account show created %d accounts", n)
	}
	out, errOut, code = s.cli(t, "account", "register")
	if code != 0 || !strings.Contains(out, "registered:  true") || !strings.Contains(errOut, "no longer knew "+oldURI) {
		t.Errorf("account register after the CA lost the account: exit %d:\n%s%s", code, out, errOut)
	}
	if n := s.pebble.AccountsCreated(t); n != 1 {
		t.Errorf("%d accounts at the restarted CA after register, want 1", n)
	}
	v, code = show()
	if code != 0 || !v.Registered || v.CAStatus != "valid" || v.URI == oldURI || v.CAURI != v.URI {
		t.Errorf("account show after registering again: exit %d, %+v", code, v)
	}
}

// With default settings, the budgets of a CA other than Let's Encrypt count
// nothing: 100 names under one registered domain are issued (Let's
// Encrypt's 50 per domain would stop at 50 for a week).
func TestHundredNamesUnderOneDomainWithDefaults(t *testing.T) {
	s := startFaultStack(t, faultOptions{})
	var env []string
	for _, e := range s.env {
		if !strings.HasPrefix(e, "CERTAGENT_LIMIT_") {
			env = append(env, e)
		}
	}
	s.env = env
	st := store.New(s.redis.Client, store.Keys{})
	s.newAgent(t, "agent-0", "--allow", "*.many.test", "--workers", "4")
	names := makeNames("n", "many.test", 100)
	s.request(t, names)
	took := s.waitAllStored(t, st, names, 4*time.Minute)
	ctx := context.Background()
	if keys := s.redis.Client.Keys(ctx, "certagent:budget*").Val(); len(keys) != 0 {
		t.Errorf("budgets counted against a CA that is not Let's Encrypt, by default: %v", keys)
	}
	if keys := s.redis.Client.Keys(ctx, "certagent:failure:*").Val(); len(keys) != 0 {
		t.Errorf("failure records: %v", keys)
	}
	rep := s.orderReport()
	t.Logf("100 names under many.test issued in %s: %s", took.Round(100*time.Millisecond), rep)
}
