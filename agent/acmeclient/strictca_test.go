package acmeclient

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// These tests run the client against Pebble behind the test harness's CA
// proxy, which enforces Let's Encrypt's rules and plays the CA's failures.

type strictCA struct {
	pebble   *testenv.Pebble
	proxy    *testenv.CAProxy
	tokens   *memTokens
	accounts *memAccounts
	client   *Client
}

func startStrictCA(t *testing.T) *strictCA {
	t.Helper()
	pebble, tokens := startCA(t)
	s := &strictCA{pebble: pebble, proxy: testenv.StartCAProxy(t, pebble), tokens: tokens, accounts: &memAccounts{}}
	s.client = s.newClient(t)
	return s
}

func (s *strictCA) newClient(t *testing.T) *Client {
	t.Helper()
	client, err := New(context.Background(), Config{DirectoryURL: s.proxy.DirectoryURL, CARootFiles: []string{s.proxy.CARootsFile}},
		s.accounts, NewHTTP01Provider(s.tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// problemOf returns the ACME problem err carries, failing the test without one.
func problemOf(t *testing.T, err error) *acme.ProblemDetails {
	t.Helper()
	var p *acme.ProblemDetails
	if !errors.As(err, &p) {
		t.Fatalf("error %v: want an ACME problem", err)
	}
	return p
}

// longName is a valid name of n bytes under example.test.
func longName(n int) string {
	const suffix = ".example.test"
	return strings.Repeat("a", n-len(suffix)) + suffix
}

func TestNewCSRLeavesOutACommonNameOver64Bytes(t *testing.T) {
	key, err := generateKey("ec256")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		names  []string
		wantCN string
	}{
		{[]string{longName(64), "www.example.test"}, longName(64)},
		{[]string{longName(65), "www.example.test"}, ""},
	} {
		der, err := newCSR(tc.names, key)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if csr.Subject.CommonName != tc.wantCN || strings.Join(csr.DNSNames, ",") != strings.Join(tc.names, ",") {
			t.Errorf("CSR for %d-byte %s: CN %q, SANs %v; want CN %q and every name", len(tc.names[0]), tc.names[0],
				csr.Subject.CommonName, csr.DNSNames, tc.wantCN)
		}
	}
}

// TestStrictCAIssuesA65ByteName: the proxy refuses a CSR whose CN is longer
// than 64 bytes, as Let's Encrypt does, and the client's own CSR for a
// 65-byte name goes through it.
func TestStrictCAIssuesA65ByteName(t *testing.T) {
	s := startStrictCA(t)
	ctx := context.Background()
	name := longName(65)

	// What the client sent before: the name as CN.
	order, err := s.client.core.Orders.New([]string{name})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.client.authorizeAll(ctx, order); err != nil {
		t.Fatal(err)
	}
	key, err := generateKey("ec256")
	if err != nil {
		t.Fatal(err)
	}
	withCN, err := x509.CreateCertificateRequest(rand.Reader,
		&x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.client.core.Orders.UpdateForCSR(order.Finalize, withCN)
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:badCSR" || !strings.Contains(p.Detail, "CN was longer than 64 bytes") {
		t.Fatalf("a CSR with a 65-byte CN: %v; want badCSR as Let's Encrypt answers", err)
	}

	cert, err := s.client.Obtain(ctx, []string{name})
	if err != nil {
		t.Fatalf("the client's order for a 65-byte name: %v (proxy refusals: %q)", err, s.proxy.Refusals())
	}
	leaf, intermediates := parseChain(t, cert.FullChain)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: s.pebble.Roots(t), Intermediates: intermediates}); err != nil {
		t.Errorf("the certificate for the 65-byte name does not verify: %v", err)
	}
	if n := len(s.proxy.Refusals()); n != 1 {
		t.Errorf("the proxy refused %d requests, want only the CSR with a long CN: %q", n, s.proxy.Refusals())
	}
}

func TestStrictCARefusesWhatLetsEncryptRefuses(t *testing.T) {
	s := startStrictCA(t)
	many := make([]string, MaxNamesPerOrder+1)
	for i := range many {
		many[i] = fmt.Sprintf("n%d.example.test", i)
	}
	_, err := s.client.core.Orders.New(many)
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:malformed" || !strings.Contains(p.Detail, "more than 100") {
		t.Errorf("an order of 101 names: %v; want malformed", err)
	}
	_, err = s.client.core.Orders.New([]string{longName(40), strings.Repeat("b", 64) + ".example.test"})
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:rejectedIdentifier" || !strings.Contains(p.Detail, "longer than 63 bytes") {
		t.Errorf("a 64-byte label: %v; want rejectedIdentifier", err)
	}
	_, err = s.client.core.Orders.New([]string{"*.wild.example.test", "a.wild.example.test"})
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:malformed" || !strings.Contains(p.Detail, "redundant with a wildcard") {
		t.Errorf("a name under a wildcard of the same order: %v; want malformed", err)
	}

	// The client itself refuses more than 100 names without asking the CA.
	before := s.proxy.Requests()
	if _, err := s.client.Obtain(context.Background(), many); !errors.Is(err, ErrTooManyNames) {
		t.Errorf("Obtain of 101 names: %v, want ErrTooManyNames", err)
	}
	if n := s.proxy.Requests() - before; n != 0 {
		t.Errorf("Obtain of 101 names sent %d requests to the CA, want none", n)
	}
}

// TestBadNonceIsRetriedTransparently: two badNonce answers cost the order
// nothing but the retries.
func TestBadNonceIsRetriedTransparently(t *testing.T) {
	s := startStrictCA(t)
	s.proxy.FailNext(testenv.FaultBadNonce, 2)
	if _, err := s.client.Obtain(context.Background(), []string{"nonce.example.test"}); err != nil {
		t.Fatalf("badNonce twice: %v, want the order retried to its certificate", err)
	}
	if n := s.proxy.Faulted(testenv.FaultBadNonce); n != 2 {
		t.Errorf("%d badNonce answers given, want 2", n)
	}
}

// TestRateLimitedParksOnlyTheOrderThatGotIt: two orders running at once
// are refused with different Retry-After values; each error gives its own
// pause, and an order for another name is not held back.
func TestRateLimitedParksOnlyTheOrderThatGotIt(t *testing.T) {
	s := startStrictCA(t)
	waits := map[string]time.Duration{"soon.example.test": 30 * time.Second, "later.example.test": 2 * time.Hour}
	for name, wait := range waits {
		s.proxy.Inject(testenv.Fault{Kind: testenv.FaultRateLimited, Times: 1, Path: testenv.PathNewOrder,
			Names: []string{name}, RetryAfter: wait})
	}
	errs := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for name := range waits {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.client.Obtain(context.Background(), []string{name})
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	for name, wait := range waits {
		rl, ok := s.client.RateLimited(errs[name])
		if !ok {
			t.Fatalf("%s: %v, want rateLimited", name, errs[name])
		}
		if got := rl.Until.Sub(start); got < wait || got > wait+time.Minute {
			t.Errorf("%s parked for %s, want its own Retry-After of %s", name, got.Round(time.Second), wait)
		}
	}
	if _, err := s.client.Obtain(context.Background(), []string{"other.example.test"}); err != nil {
		t.Errorf("another name after the refusals: %v", err)
	}
}

// TestServerInternalSurfacesAsACAError: a 500 from the CA fails the order
// with the CA's problem, not a rate limit, and the next order goes through.
func TestServerInternalSurfacesAsACAError(t *testing.T) {
	s := startStrictCA(t)
	s.proxy.Inject(testenv.Fault{Kind: testenv.FaultServerInternal, Times: 1, Path: testenv.PathFinalize})
	_, err := s.client.Obtain(context.Background(), []string{"internal.example.test"})
	// A 5xx is the CA's trouble, not the name's: the message says so first
	// (outage.go), the step stays in the chain.
	var outage *OutageError
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:serverInternal" || p.HTTPStatus != 500 ||
		!strings.HasPrefix(err.Error(), "CA failing: HTTP 500 serverInternal at ") || !errors.As(err, &outage) ||
		!strings.HasPrefix(outage.Err.Error(), "obtaining certificate for internal.example.test: finalizing the order: ") {
		t.Errorf("serverInternal at finalize: %v; want the CA's 500 problem, the cause first, wrapped with the step", err)
	}
	if _, limited := s.client.RateLimited(err); limited {
		t.Error("a 500 taken for a rate limit")
	}
	if _, err := s.client.Obtain(context.Background(), []string{"internal.example.test"}); err != nil {
		t.Errorf("the next order: %v", err)
	}

	// A CA answering nothing but 500, its directory too.
	s.proxy.Inject(testenv.Fault{Kind: testenv.FaultServerInternal, Path: testenv.AllRequests})
	_, err = New(context.Background(), Config{DirectoryURL: s.proxy.DirectoryURL, CARootFiles: []string{s.proxy.CARootsFile}},
		&memAccounts{}, NewHTTP01Provider(s.tokens, 0))
	if err == nil || !strings.HasPrefix(err.Error(), "CA failing: HTTP 500") || !strings.Contains(errors.Unwrap(err).Error(), "reading the ACME directory") {
		t.Errorf("a client of a CA answering only 500: %v; want the directory's 500", err)
	}
	s.proxy.ClearFaults()
	if _, err := s.client.Obtain(context.Background(), []string{"cleared.example.test"}); err != nil {
		t.Errorf("an order once the CA answers again: %v", err)
	}
}

// TestHungRequestWaitsUntilReleased: a request the CA accepts but does not
// answer holds the order; once released it reaches the CA and the order
// completes.
func TestHungRequestWaitsUntilReleased(t *testing.T) {
	s := startStrictCA(t)
	s.proxy.Inject(testenv.Fault{Kind: testenv.FaultHang, Times: 1, Path: testenv.PathFinalize})
	done := make(chan error, 1)
	go func() {
		_, err := s.client.Obtain(context.Background(), []string{"hang.example.test"})
		done <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for s.proxy.Hung() != 1 {
		select {
		case err := <-done:
			t.Fatalf("the order ended (%v) without meeting the hang", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the finalization never reached the proxy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the order ended (%v) while its finalization hung", err)
	case <-time.After(300 * time.Millisecond):
	}
	s.proxy.ReleaseHung()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after the release: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the order did not finish after the release")
	}
}

// TestAccountLostInACAReset: after the CA lost its accounts, the stored
// account is refused with accountDoesNotExist, onlyReturnExisting finds
// none for the key, and registering the key again makes orders work.
func TestAccountLostInACAReset(t *testing.T) {
	s := startStrictCA(t)
	ctx := context.Background()
	if _, err := s.client.Obtain(ctx, []string{"before.example.test"}); err != nil {
		t.Fatal(err)
	}
	s.proxy.ResetAccounts()
	_, err := s.client.Obtain(ctx, []string{"after.example.test"})
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:accountDoesNotExist" {
		t.Fatalf("an order after the reset: %v; want accountDoesNotExist", err)
	}

	key, err := parseKey([]byte(s.accounts.key))
	if err != nil {
		t.Fatal(err)
	}
	httpClient, err := httpClient([]string{s.proxy.CARootsFile})
	if err != nil {
		t.Fatal(err)
	}
	core, err := api.New(httpClient, "certagent-test", s.proxy.DirectoryURL, "", key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = core.Accounts.New(acme.Account{OnlyReturnExisting: true})
	if p := problemOf(t, err); p.Type != "urn:ietf:params:acme:error:accountDoesNotExist" {
		t.Fatalf("onlyReturnExisting after the reset: %v; want accountDoesNotExist", err)
	}

	// Registering the stored key again.
	old := s.accounts.uri
	s.accounts.uri = ""
	client := s.newClient(t)
	if s.accounts.uri == "" || s.accounts.sets != 2 {
		t.Fatalf("the key was not registered again: %+v", s.accounts)
	}
	if _, err := client.Obtain(ctx, []string{"after.example.test"}); err != nil {
		t.Errorf("an order after registering again (account %s, was %s): %v", s.accounts.uri, old, err)
	}
	if _, err := core.Accounts.New(acme.Account{OnlyReturnExisting: true}); err != nil {
		t.Errorf("onlyReturnExisting once registered again: %v", err)
	}
}
