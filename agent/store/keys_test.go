package store

import (
	"testing"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestKeys(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{Keys{}.Cert("a.example.com"), "certagent:cert:a.example.com"},
		{Keys{}.Cert("*.example.com"), "certagent:cert:*.example.com"},
		{Keys{Prefix: "fleet1:"}.Cert("a.example.com"), "fleet1:cert:a.example.com"},
		{Keys{}.Token("a.example.com", "tok_-1"), "certagent:token:a.example.com:tok_-1"},
		{Keys{}.Requests(), "certagent:requests"},
		{Keys{}.PeerNonce("b", "00ff"), "certagent:peer-nonce:b:00ff"},
		{Keys{}.Tombstones(), "certagent:tombstones"},
		{Keys{}.Peers(), "certagent:peers"},
		{Keys{}.Issuing("a.example.com"), "certagent:issuing:a.example.com"},
		{Keys{Prefix: "{ca}:"}.Requests(), "{ca}:requests"},
		{Keys{}.Expiry(), "certagent:expiry"},
		{Keys{}.Changes(), "certagent:changes"},
		{Keys{}.Events(), "certagent:events"},
		{Keys{}.Lock("a.example.com"), "certagent:lock:a.example.com"},
		{Keys{}.Fence("a.example.com"), "certagent:fence:a.example.com"},
		{Keys{}.Order("a.example.com"), "certagent:order:a.example.com"},
		{Keys{}.Renewals(), "certagent:renewals"},
		{Keys{}.RenewalFailures(), "certagent:renewal-failures"},
		{Keys{}.Renewal("a.example.com"), "certagent:renewal:a.example.com"},
		{Keys{}.Allow(), "certagent:allow"},
		{Keys{}.Rules(), "certagent:rules"},
		{Keys{}.Alive(), "certagent:alive"},
		{Keys{}.AllowGeneration(), "certagent:allow-generation"},
		{Keys{}.Denied("a.example.com"), "certagent:denied:a.example.com"},
		{Keys{}.Ask("a.example.com"), "certagent:ask:a.example.com"},
		{Keys{}.Failure("a.example.com"), "certagent:failure:a.example.com"},
		{Keys{}.Failures(), "certagent:failures"},
		{Keys{}.Budget("certs", "example.com"), "certagent:budget:certs:example.com"},
		{Keys{}.Park("orders", "0123"), "certagent:park:orders:0123"},
		{Keys{}.BudgetHeld("certs", "example.com"), "certagent:budget-held:certs:example.com"},
		{Keys{}.AccountLock("https://ca/dir", "e@x"), "certagent:account-lock:" + AccountID("https://ca/dir", "e@x")},
		{Keys{}.Account("https://ca.example/dir", "ops@example.com"), "certagent:account:" + AccountID("https://ca.example/dir", "ops@example.com")},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if a, b := AccountID("https://ca/dir", "x@y"), AccountID("https://ca/dir", "z@y"); a == b || len(a) != 32 {
		t.Errorf("account ids %q and %q: want 32 hex characters, distinct per e-mail", a, b)
	}
}

// TestKeysMatchSchemaDocument fails when the key builder and
// docs/redis-schema.md disagree, so neither can change alone.
func TestKeysMatchSchemaDocument(t *testing.T) {
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	keys := Keys{Prefix: "p:"}
	built := map[string][]string{
		"cert":        {keys.Cert("a.example.com"), "name", "a.example.com"},
		"token":       {keys.Token("a.example.com", "T0k"), "name", "a.example.com", "token", "T0k"},
		"requests":    {keys.Requests()},
		"peernonce":   {keys.PeerNonce("b", "00ff"), "site", "b", "nonce", "00ff"},
		"tombstones":  {keys.Tombstones()},
		"peers":       {keys.Peers()},
		"issuing":     {keys.Issuing("a.example.com"), "name", "a.example.com"},
		"expiry":      {keys.Expiry()},
		"changes":     {keys.Changes()},
		"events":      {keys.Events()},
		"refusals":    {keys.Refusals()},
		"lock":        {keys.Lock("a.example.com"), "name", "a.example.com"},
		"fence":       {keys.Fence("a.example.com"), "name", "a.example.com"},
		"order":       {keys.Order("a.example.com"), "name", "a.example.com"},
		"renewals":    {keys.Renewals()},
		"renewalfail": {keys.RenewalFailures()},
		"renewal":     {keys.Renewal("a.example.com"), "name", "a.example.com"},
		"account":     {keys.Account("https://ca/dir", "e@x"), "account", AccountID("https://ca/dir", "e@x")},
		"allow":       {keys.Allow()},
		"rules":       {keys.Rules()},
		"alive":       {keys.Alive()},
		"allowgen":    {keys.AllowGeneration()},
		"denied":      {keys.Denied("a.example.com"), "name", "a.example.com"},
		"ask":         {keys.Ask("a.example.com"), "name", "a.example.com"},
		"failure":     {keys.Failure("a.example.com"), "name", "a.example.com"},
		"failures":    {keys.Failures()},
		"budget":      {keys.Budget("certs", "example.com"), "kind", "certs", "subject", "example.com"},
		"park":        {keys.Park("orders", "0123"), "kind", "orders", "subject", "0123"},
		"cadown":      {keys.CADown("https://ca/dir"), "ca", CAID("https://ca/dir")},
		"cawaiting":   {keys.CAWaiting()},
		"budgetheld":  {keys.BudgetHeld("certs", "example.com"), "kind", "certs", "subject", "example.com"},
		"accountlock": {keys.AccountLock("https://ca/dir", "e@x"), "account", AccountID("https://ca/dir", "e@x")},
	}
	for id, b := range built {
		entry, ok := doc[id]
		if !ok {
			t.Errorf("the schema document has no key %q", id)
			continue
		}
		want, err := entry.Key("p:", b[1:]...)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		if b[0] != want {
			t.Errorf("%s: Keys builds %q, the document says %q", id, b[0], want)
		}
	}
	for id := range doc {
		if _, ok := built[id]; !ok {
			t.Errorf("the schema document describes key %q that Keys does not build", id)
		}
	}
}
