package acmeclient

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// TestProfilesARIReplacesAndRevocation runs a certificate's life against a
// real Pebble: issued under a short profile, its renewal window read from the
// CA (the CA's default one, then one the test sets), renewed with replaces,
// and revoked.
func TestProfilesARIReplacesAndRevocation(t *testing.T) {
	pebble, tokens := startCAWith(t, testenv.PebbleOptions{Profiles: map[string]time.Duration{"fiveminutes": 5 * time.Minute}})
	ctx := context.Background()
	client, err := New(ctx, Config{DirectoryURL: pebble.DirectoryURL, CARootFiles: []string{pebble.CARootsFile},
		Profile: "fiveminutes"}, &memAccounts{}, NewHTTP01Provider(tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	if client.AccountURI() == "" {
		t.Error("no account URL after registration")
	}
	// Pebble finds the replaced certificate only when its serial's first
	// byte is below 0x80 (see TestRenewalGoesAheadWhenTheCARefusesTheHint).
	first, leaf := obtainUntil(t, client, "life.example.test", func(serial []byte) bool { return serial[0] < 0x80 })
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 5*time.Minute || life < 4*time.Minute {
		t.Errorf("lifetime %s under the fiveminutes profile", life)
	}
	if first.Profile != "fiveminutes" || first.Replaces != "" {
		t.Errorf("first order: profile %q replaces %q", first.Profile, first.Replaces)
	}

	// Pebble's own window lies within the certificate's lifetime.
	w, err := client.RenewalInfo(ctx, first.FullChain)
	if err != nil {
		t.Fatal(err)
	}
	if w.Start.Before(leaf.NotBefore.Add(-time.Second)) || w.End.After(leaf.NotAfter.Add(time.Second)) || w.RetryAfter <= 0 {
		t.Errorf("window %s..%s retry %s for a certificate valid %s..%s", w.Start, w.End, w.RetryAfter, leaf.NotBefore, leaf.NotAfter)
	}
	// A window the CA chose is returned as it is.
	start, end := time.Now().Add(-time.Hour).Truncate(time.Second), time.Now().Add(-59*time.Minute).Truncate(time.Second)
	pebble.SetRenewalInfo(t, first.FullChain, start, end)
	if w, err = client.RenewalInfo(ctx, first.FullChain); err != nil {
		t.Fatal(err)
	}
	if !w.Start.Equal(start) || !w.End.Equal(end) {
		t.Errorf("window %s..%s, want %s..%s", w.Start, w.End, start, end)
	}

	id, err := CertID(first.FullChain)
	if err != nil {
		t.Fatal(err)
	}
	second, err := client.ObtainWith(ctx, []string{"life.example.test"}, OrderOptions{Replaces: id, Profile: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if second.Replaces != id {
		t.Errorf("the CA recorded replaces %q, want %q", second.Replaces, id)
	}
	if second.Profile != "default" {
		t.Errorf("per-order profile: got %q", second.Profile)
	}

	if err := client.Revoke(ctx, second.FullChain, RevocationReasons["keyCompromise"]); err != nil {
		t.Fatal(err)
	}
	leaf2, _ := parseChain(t, second.FullChain)
	if status, reason := pebble.CertStatus(t, leaf2.SerialNumber.Text(16)); status != "Revoked" || reason != 1 {
		t.Errorf("Pebble reports %q reason %d, want Revoked reason 1", status, reason)
	}
	if status, _ := pebble.CertStatus(t, leaf.SerialNumber.Text(16)); status != "Valid" {
		t.Errorf("the first certificate is %q, want Valid", status)
	}
	// Revoking twice is an error the caller sees.
	if err := client.Revoke(ctx, second.FullChain, 0); err == nil || !strings.Contains(err.Error(), "revoking serial") {
		t.Errorf("second revocation: %v", err)
	}
}

// TestRenewalGoesAheadWhenTheCARefusesTheHint: a CA that cannot match the
// replaced certificate refuses the whole order (Pebble before v2.10.3 did so
// for the ARI id of a serial whose first byte is 0x80 or more, correct per
// RFC 9773 with the DER integer's leading 0x00; v2.10.3 strips that byte). The
// test names a serial the CA never issued, which it refuses the same way. The
// renewal must still happen, without the hint.
func TestRenewalGoesAheadWhenTheCARefusesTheHint(t *testing.T) {
	pebble, tokens := startCA(t)
	ctx := context.Background()
	client, err := New(ctx, Config{DirectoryURL: pebble.DirectoryURL, CARootFiles: []string{pebble.CARootsFile}},
		&memAccounts{}, NewHTTP01Provider(tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	first, err := client.Obtain(ctx, []string{"hint.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := parseChain(t, first.FullChain)
	unknown := new(big.Int).Add(leaf.SerialNumber, big.NewInt(1))
	id := base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(unknown.Bytes())

	second, err := client.ObtainWith(ctx, []string{"hint.example.test"}, OrderOptions{Replaces: id})
	if err != nil {
		t.Fatalf("renewal with a hint the CA cannot match: %v", err)
	}
	if second.Replaces != "" {
		t.Errorf("the CA recorded replaces %q for an order sent without it", second.Replaces)
	}
}

func TestReplacesRejectedKeepsLimitsAndOutages(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&acme.ProblemDetails{Type: "urn:ietf:params:acme:error:serverInternal", HTTPStatus: 500}, true},
		{&acme.ProblemDetails{Type: "urn:ietf:params:acme:error:malformed", HTTPStatus: 400}, true},
		{&acme.AlreadyReplacedError{ProblemDetails: &acme.ProblemDetails{Type: acme.AlreadyReplacedErr, HTTPStatus: 409}}, true},
		{&acme.RateLimitedError{ProblemDetails: &acme.ProblemDetails{Type: acme.RateLimitedErr, HTTPStatus: 429}}, false},
		{&acme.ProblemDetails{Type: acme.BadNonceErr, HTTPStatus: 400}, false},
		{&acme.ProblemDetails{Type: "urn:ietf:params:acme:error:serverInternal", HTTPStatus: 503}, false},
		{errors.New("dial tcp: connection refused"), false},
	} {
		if got := replacesRejected(fmt.Errorf("wrapped: %w", tc.err)); got != tc.want {
			t.Errorf("replacesRejected(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// obtainUntil orders certificates for name until one's serial (its
// unsigned bytes) satisfies want.
func obtainUntil(t *testing.T, client *Client, name string, want func(serial []byte) bool) (*Certificate, *x509.Certificate) {
	t.Helper()
	for range 5 {
		cert, err := client.Obtain(context.Background(), []string{name})
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := parseChain(t, cert.FullChain)
		if want(leaf.SerialNumber.Bytes()) {
			return cert, leaf
		}
	}
	t.Fatalf("5 certificates for %s and none with the serial the test needs", name)
	return nil, nil
}

func TestCertIDRefusesWhatItCannotIdentify(t *testing.T) {
	if _, err := CertID([]byte("not pem")); err == nil {
		t.Error("CertID(garbage): want an error")
	}
	// Without an authority key identifier there is no ARI id.
	c := testenv.NewCert(t, testenv.CertSpec{CommonName: "self.example.test", DNSNames: []string{"self.example.test"}})
	noAKI := *c.X509
	noAKI.AuthorityKeyId = nil
	if _, err := ariCertID(&noAKI); err == nil {
		t.Error("a certificate without AKI got an id")
	}
}

func TestEABNeedsBothParts(t *testing.T) {
	pebble, tokens := startCA(t)
	_, err := New(context.Background(), Config{DirectoryURL: pebble.DirectoryURL, CARootFiles: []string{pebble.CARootsFile},
		EABKeyID: "kid-only"}, &memAccounts{}, NewHTTP01Provider(tokens, 0))
	if err == nil || !strings.Contains(err.Error(), "external account binding") {
		t.Errorf("error %v: want the EAB complaint", err)
	}
	if errors.Is(err, ErrNoARI) {
		t.Error("unrelated error")
	}
}

func TestDNSRules(t *testing.T) {
	rules := DNSRules{"*.example.com", "exact.example.org"}
	for name, want := range map[string]bool{
		"a.example.com":       true,
		"a.b.example.com":     true,
		"*.example.com":       true,
		"example.com":         false,
		"badexample.com":      false,
		"exact.example.org":   true,
		"x.exact.example.org": false,
	} {
		if got := rules.Match(name); got != want {
			t.Errorf("Match(%q) = %v, want %v", name, got, want)
		}
	}
	if !(DNSRules{"*"}).Match("anything.example") || (DNSRules{}).Match("a.example.com") {
		t.Error("* must match everything, no rules nothing")
	}
	if _, err := NewDNSProvider("no-such"); err == nil || !strings.Contains(err.Error(), "cloudflare") {
		t.Errorf("unknown provider: %v (want the list of known ones)", err)
	}
}

// A Lazy client of a CA that is down fails each use with a clear error and
// connects once the CA answers.
func TestLazyConnectsOnUse(t *testing.T) {
	pebble, tokens := startCA(t)
	ctx := context.Background()
	down := NewLazy(Config{DirectoryURL: "https://127.0.0.1:1/dir"}, &memAccounts{}, NewHTTP01Provider(tokens, 0))
	if down.DirectoryURL() != "https://127.0.0.1:1/dir" {
		t.Error("directory URL")
	}
	if _, err := down.Obtain(ctx, []string{"lazy.example.test"}); err == nil || !strings.Contains(err.Error(), "CA unreachable: connection refused at https://127.0.0.1:1/dir") {
		t.Errorf("down CA: %v", err)
	}
	accounts := &memAccounts{}
	up := NewLazy(Config{DirectoryURL: pebble.DirectoryURL, CARootFiles: []string{pebble.CARootsFile}}, accounts, NewHTTP01Provider(tokens, 0))
	if accounts.sets != 0 {
		t.Error("NewLazy registered an account before any use")
	}
	cert, err := up.Obtain(ctx, []string{"lazy.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.RenewalInfo(ctx, cert.FullChain); err != nil {
		t.Errorf("renewal info through the lazy client: %v", err)
	}
	if err := up.Revoke(ctx, cert.FullChain, 0); err != nil {
		t.Errorf("revoke through the lazy client: %v", err)
	}
	if accounts.sets != 1 {
		t.Errorf("%d registrations, want 1", accounts.sets)
	}
}

func TestLazyConnectsOnceForConcurrentOrders(t *testing.T) {
	// A CA that answers slowly and then fails: orders waiting for the same
	// connection share its result instead of each trying after the other.
	var asked atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		asked.Add(1)
		time.Sleep(300 * time.Millisecond)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	lazy := NewLazy(Config{DirectoryURL: srv.URL + "/dir", HTTPClient: srv.Client()}, &memAccounts{}, NewHTTP01Provider(&memTokens{tokens: map[string]string{}}, 0))
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = lazy.Obtain(context.Background(), []string{"lazy.example.test"})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "CA failing: HTTP 503 at "+srv.URL+"/dir") {
			t.Errorf("order with the CA down: %v", err)
		}
	}
	if took := time.Since(start); took > 900*time.Millisecond || asked.Load() != 1 {
		t.Errorf("4 orders took %s and asked the CA %d times; want one attempt shared", took, asked.Load())
	}
	// The next use tries again.
	if _, err := lazy.Obtain(context.Background(), []string{"lazy.example.test"}); err == nil || asked.Load() != 2 {
		t.Errorf("next use: %v after %d questions; want a new attempt", err, asked.Load())
	}
}

// TestRevokeWithTheCertificateKey: an account that did not order a
// certificate is refused its revocation (NotThisAccounts); the certificate's
// own key revokes it, with no account, as another site does.
func TestRevokeWithTheCertificateKey(t *testing.T) {
	pebble, tokens := startCA(t)
	ctx := context.Background()
	cfg := Config{DirectoryURL: pebble.DirectoryURL, CARootFiles: []string{pebble.CARootsFile}}
	orderer, err := New(ctx, cfg, &memAccounts{}, NewHTTP01Provider(tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := orderer.Obtain(ctx, []string{"elsewhere.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(ctx, cfg, &memAccounts{}, NewHTTP01Provider(tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	if other.AccountURI() == orderer.AccountURI() {
		t.Fatal("both clients use one account")
	}
	err = other.Revoke(ctx, cert.FullChain, 0)
	if err == nil || !NotThisAccounts(err) {
		t.Fatalf("revocation by another account: %v, want the CA's unauthorized", err)
	}
	if err := RevokeWithCertKey(ctx, cfg, cert.FullChain, cert.KeyPEM, RevocationReasons["superseded"]); err != nil {
		t.Fatal(err)
	}
	leaf, _ := parseChain(t, cert.FullChain)
	if status, reason := pebble.CertStatus(t, leaf.SerialNumber.Text(16)); status != "Revoked" || reason != 4 {
		t.Errorf("Pebble reports %q reason %d, want Revoked reason 4", status, reason)
	}
	// A key that is not the certificate's is refused by the CA.
	second, err := orderer.Obtain(ctx, []string{"elsewhere.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.RevokeWithCertKey(ctx, second.FullChain, cert.KeyPEM, 0); err == nil {
		t.Error("revoked with another certificate's key")
	}
}
