package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/internal/testenv"
)

func TestParseNamesFile(t *testing.T) {
	orders, problems := parseNamesFile(strings.NewReader(
		"# comment\n\nA.example.com\nb.example.com, www.b.example.com b.example.com\n*.wild.example.com\nbad_name\nBücher.example\n"))
	if len(problems) != 1 || !strings.Contains(problems[0], "line 6") {
		t.Errorf("problems %q: want one, on line 6", problems)
	}
	want := [][]string{{"a.example.com"}, {"b.example.com", "www.b.example.com"}, {"*.wild.example.com"}, {"xn--bcher-kva.example"}}
	if len(orders) != len(want) {
		t.Fatalf("orders %q, want %q", orders, want)
	}
	for i := range want {
		if strings.Join(orders[i], ",") != strings.Join(want[i], ",") {
			t.Errorf("line %d: %q, want %q", i, orders[i], want[i])
		}
	}
}

func TestParseReason(t *testing.T) {
	for in, want := range map[string]uint{"keyCompromise": 1, "4": 4, "unspecified": 0} {
		if got, err := parseReason(in); err != nil || got != want {
			t.Errorf("parseReason(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"2", "cACompromise", "", "-1"} {
		if _, err := parseReason(bad); err == nil {
			t.Errorf("parseReason(%q): want an error (not a reason a subscriber gives)", bad)
		}
	}
}

// checkPair takes the key forms certbot and others write (SEC1 "EC PRIVATE
// KEY" here) and stores PKCS #8; it refuses mismatched and expired pairs.
func TestCheckPair(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "test CA", IsCA: true})
	leaf := testenv.NewCert(t, testenv.CertSpec{CommonName: "www.shop.example", DNSNames: []string{"shop.example", "www.shop.example"}, Parent: ca})
	sec1, err := x509.MarshalECPrivateKey(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	chain := write("chain.pem", append(append([]byte{}, leaf.CertPEM...), ca.CertPEM...))
	key := write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	rec, err := checkPair(&importPair{source: "x", chainPath: chain, keyPath: key}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if rec.Primary() != "www.shop.example" || len(rec.Names) != 2 || rec.KeyType != "ec256" {
		t.Errorf("record: primary %q names %v key type %q (the subject's name is primary)", rec.Primary(), rec.Names, rec.KeyType)
	}
	if block, _ := pem.Decode([]byte(rec.Key)); block == nil || block.Type != "PRIVATE KEY" {
		t.Error("the stored key is not PKCS #8")
	}
	if strings.Count(rec.FullChain, "BEGIN CERTIFICATE") != 2 {
		t.Error("the intermediate was lost")
	}

	other := testenv.NewCert(t, testenv.CertSpec{CommonName: "other.example", DNSNames: []string{"other.example"}})
	otherKey := write("other.key", other.KeyPEM)
	if _, err := checkPair(&importPair{chainPath: chain, keyPath: otherKey}, time.Now()); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := checkPair(&importPair{chainPath: chain, keyPath: key}, time.Now().Add(48*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
	// Each mistake is told apart: a key of another certificate, a chain or
	// a key that is not PEM (or a key given as the chain).
	garbage := write("garbage.pem", []byte("not a certificate"))
	for _, tc := range []struct {
		what, chain, key, want string
	}{
		{"a chain that is not PEM", garbage, key, garbage + " is not a PEM certificate chain"},
		{"a key that is not PEM", chain, garbage, garbage + " is not a PEM private key"},
		{"the key given as the chain", key, key, key + " is not a PEM certificate chain"},
		{"the chain given as the key", chain, chain, chain + " is not a PEM private key"},
		{"a key of another certificate", chain, otherKey, "the key in " + otherKey + " does not match the certificate in " + chain},
	} {
		_, err := checkPair(&importPair{chainPath: tc.chain, keyPath: tc.key}, time.Now())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.what, err, tc.want)
		}
	}
}

func TestProgressBarAndTerminalDetection(t *testing.T) {
	var out strings.Builder
	p := &progressBar{w: &out, total: 4}
	p.step(false)
	p.step(true)
	p.done()
	want := "\r[" + strings.Repeat("#", 7) + strings.Repeat(".", 23) + "] 1/4 issued, 0 failed" +
		"\r[" + strings.Repeat("#", 15) + strings.Repeat(".", 15) + "] 1/4 issued, 1 failed\n"
	if out.String() != want {
		t.Errorf("progress output %q, want %q", out.String(), want)
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if isTerminal(f) || isTerminal(&out) || isTerminal(null) {
		t.Error("a file, a buffer or /dev/null taken for a terminal: bulk output would be a progress bar instead of lines")
	}
}

// issueOrdersOf returns what `certagent issue args...` would order, or its
// usage error, without ordering anything.
func issueOrdersOf(args ...string) ([][]string, error) {
	var got [][]string
	cmd := issueCommand()
	cmd.Action = func(c *cli.Context) error {
		var err error
		got, err = issueOrders(c)
		return err
	}
	app := &cli.App{Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run(append([]string{"certagent", "issue"}, args...))
	return got, err
}

func TestIssueFlagsAfterNames(t *testing.T) {
	got, err := issueOrdersOf("a.example.com", "B.example.com", "--san")
	if err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"a.example.com", "b.example.com"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("issue a b --san: orders %v, want %v", got, want)
	}
}

// TestIssueRefusesMoreNamesThanAnOrderTakes: --san with 101 names, and a
// --from-file line with as many, are refused with the limit named before any
// order; 100 names (a repeated name counted once) pass.
func TestIssueRefusesMoreNamesThanAnOrderTakes(t *testing.T) {
	names := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("n%d.example.com", i)
		}
		return out
	}
	got, err := issueOrdersOf(append([]string{"--san"}, append(names(100), "n0.example.com")...)...)
	if err != nil || len(got) != 1 || len(got[0]) != 101 {
		t.Fatalf("--san with 100 names (one repeated): %v, %d orders", err, len(got))
	}
	_, err = issueOrdersOf(append([]string{"--san"}, names(101)...)...)
	var exit cli.ExitCoder
	if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(err.Error(), "101 names") ||
		!strings.Contains(err.Error(), "at most 100 names") {
		t.Errorf("--san with 101 names: %v, want a usage error naming the limit", err)
	}

	orders, problems := parseNamesFile(strings.NewReader("one.example.com\n" + strings.Join(names(101), " ") + "\n"))
	if len(problems) != 1 || !strings.Contains(problems[0], "line 2: 101 names") || len(orders) != 1 {
		t.Errorf("a file line of 101 names: orders %v, problems %q; want line 2 refused", orders, problems)
	}
}
