package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// TestOrdersMeetLetsEncryptsRules issues through the CA proxy that holds
// orders to Let's Encrypt's rules: a 65-byte name (too long for a subject
// common name) is issued and served, and an order of 101 names is refused by
// certagent before the CA sees it.
func TestOrdersMeetLetsEncryptsRules(t *testing.T) {
	s := startStack(t)
	const suffix = ".example.test"
	name := strings.Repeat("l", 65-len(suffix)) + suffix
	out, errOut, code := s.cli(t, "issue", name)
	if code != 0 {
		t.Fatalf("issue of a 65-byte name exited %d: %s%s\nrefused by the CA: %q", code, out, errOut, s.ca.Refusals())
	}
	chain := s.handshake(t, name)
	if err := s.verifies(t, chain, name); err != nil {
		t.Errorf("the 65-byte name is served a certificate that does not verify: %v", err)
	}

	orders := len(s.ca.Orders())
	names := make([]string, 101)
	for i := range names {
		names[i] = fmt.Sprintf("many-%d.example.test", i)
	}
	_, errOut, code = s.cli(t, append([]string{"issue", "--san"}, names...)...)
	if code != 2 || !strings.Contains(errOut, "at most 100 names") {
		t.Errorf("issue --san with 101 names: exit %d, %q; want 2 and the limit named", code, errOut)
	}
	if n := len(s.ca.Orders()) - orders; n != 0 {
		t.Errorf("%d orders reached the CA for 101 names, want none", n)
	}
	if refused := s.ca.Refusals(); len(refused) != 0 {
		t.Errorf("the CA refused, as Let's Encrypt would: %q", refused)
	}
}
