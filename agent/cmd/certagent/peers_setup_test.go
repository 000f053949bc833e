package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/certagent/certagent/agent/internal/testenv"
)

func TestPeerRootsAreOnlyTheGivenFiles(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "fleet CA", IsCA: true})
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pool, err := peerRoots([]string{"", caFile})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pool.Subjects()); n != 1 {
		t.Errorf("the pool holds %d roots, want only the fleet CA", n)
	}
	empty := filepath.Join(dir, "empty.pem")
	_ = os.WriteFile(empty, []byte("no certificate here"), 0o600)
	for _, files := range [][]string{{empty}, {filepath.Join(dir, "missing.pem")}} {
		if _, err := peerRoots(files); err == nil {
			t.Errorf("peerRoots(%v): want an error", files)
		}
	}
	if pool, err := peerRoots(nil); err != nil || pool == nil {
		t.Errorf("no files: %v, %v; want the system roots", pool, err)
	}
}
