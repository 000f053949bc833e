package testenv

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"
	"time"
)

func TestStartPebble(t *testing.T) {
	start := time.Now()
	p := StartPebble(t, PebbleOptions{HTTPPort: FreePort(t)})
	t.Logf("pebble answered after %s", time.Since(start).Round(time.Millisecond))

	dir := p.Directory(t)
	for _, key := range []string{"newNonce", "newAccount", "newOrder"} {
		if _, ok := dir[key]; !ok {
			t.Errorf("directory has no %s: %v", key, dir)
		}
	}
	if err := p.Alive(context.Background()); err != nil {
		t.Fatal(err)
	}

	roots := p.RootCerts(t)
	if len(roots) == 0 || !roots[0].IsCA {
		t.Fatalf("RootCerts = %v, want at least one CA", roots)
	}
	if p.Roots(t) == nil || p.Intermediates(t) == nil {
		t.Fatal("Roots or Intermediates returned nil")
	}
	if got := p.OrdersCreated(t); got != 0 {
		t.Errorf("OrdersCreated = %d before any order", got)
	}

	// The listener certificate verifies against CARootsFile for 127.0.0.1.
	caPEM, err := os.ReadFile(p.CARootsFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		t.Fatalf("%s holds no PEM", p.CARootsFile)
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		t.Fatalf("%s: %v", p.CARootsFile, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := p.Resolver().LookupIP(ctx, "ip4", "anything.example.test")
	if err != nil {
		t.Fatalf("resolving through the DNS stub on %s: %v", p.DNSAddr, err)
	}
	if len(ips) != 1 || !ips[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("anything.example.test resolved to %v, want 127.0.0.1", ips)
	}
	// AAAA answers are empty, so the VA dials 127.0.0.1 and not ::1.
	if ips, err := p.Resolver().LookupIP(ctx, "ip6", "anything.example.test"); err == nil && len(ips) > 0 {
		t.Errorf("AAAA for anything.example.test = %v, want none", ips)
	}
}

// A restarted Pebble answers at the same directory URL through the same
// trusted listener certificate, with new roots.
func TestPebbleRestart(t *testing.T) {
	p := StartPebble(t, PebbleOptions{HTTPPort: FreePort(t)})
	dirURL, oldRoot := p.DirectoryURL, p.RootCerts(t)[0]
	p.Restart(t)
	if p.DirectoryURL != dirURL {
		t.Errorf("directory moved from %s to %s", dirURL, p.DirectoryURL)
	}
	if err := p.Alive(context.Background()); err != nil {
		t.Fatal(err)
	}
	if newRoot := p.RootCerts(t)[0]; newRoot.Equal(oldRoot) {
		t.Error("the restarted Pebble has the same root")
	}
	if got := p.AccountsCreated(t); got != 0 {
		t.Errorf("AccountsCreated = %d after the restart", got)
	}
}
