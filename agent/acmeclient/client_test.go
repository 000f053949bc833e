package acmeclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/go-acme/lego/v4/acme"
)

// memTokens is an HTTP-01 responder standing in for nginx, so that these
// tests exercise the ACME flow against a real Pebble on their own.
type memTokens struct {
	mu     sync.Mutex
	tokens map[string]string
	puts   int
	broken bool // answer nothing over HTTP, as an nginx that cannot read them
	// brokenHost answers nothing over HTTP for that name only.
	brokenHost string
	// loseNext drops the next token once it has been read back, as a
	// Redis restart that missed the last writes does; lost counts them.
	loseNext bool
	lost     int
	// restartedAt is when the store last "restarted" (zero: never).
	restartedAt time.Time
	// unavailable answers the next requests 503, as nginx does while it
	// cannot reach Redis.
	unavailable int
}

func (m *memTokens) RestartedSince(_ context.Context, since time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.restartedAt.After(since), nil
}

func (m *memTokens) PutToken(_ context.Context, name, token, keyAuth string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.puts++
	m.tokens[name+"/"+token] = keyAuth
	return nil
}

func (m *memTokens) Token(_ context.Context, name, token string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keyAuth := m.tokens[name+"/"+token]
	if m.loseNext && keyAuth != "" {
		m.loseNext = false
		m.lost++
		delete(m.tokens, name+"/"+token)
	}
	return keyAuth, nil
}

func (m *memTokens) DeleteToken(_ context.Context, name, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.tokens, name+"/"+token)
	return nil
}

func (m *memTokens) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	token := strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")
	m.mu.Lock()
	keyAuth, ok := m.tokens[host+"/"+token]
	broken := m.broken || host == m.brokenHost
	unavailable := m.unavailable > 0
	if unavailable {
		m.unavailable--
	}
	m.mu.Unlock()
	if unavailable {
		http.Error(w, "token store unavailable", http.StatusServiceUnavailable)
		return
	}
	if !ok || broken {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write([]byte(keyAuth))
}

// memAccounts is an AccountStore in memory.
type memAccounts struct {
	mu         sync.Mutex
	key, uri   string
	sets       int
	generation int64
	lock       chan struct{}
}

func (m *memAccounts) ClaimAccountKey(_ context.Context, _, _, keyPEM string) (string, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.key == "" {
		m.key = keyPEM
	}
	return m.key, m.uri, nil
}

func (m *memAccounts) SetAccountURI(_ context.Context, _, _, uri string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.uri = uri
	m.sets++
	return nil
}

func (m *memAccounts) LoadAccount(context.Context, string, string) (string, string, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.key, m.uri, m.generation, nil
}

func (m *memAccounts) ReplaceAccount(_ context.Context, _, _, keyPEM, uri string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.key, m.uri = keyPEM, uri
	m.sets++
	m.generation++
	return nil
}

// LockAccount is a lock in memory: the agents of a test share memAccounts.
func (m *memAccounts) LockAccount(ctx context.Context, _, _ string, _ time.Duration) (func(), error) {
	m.mu.Lock()
	if m.lock == nil {
		m.lock = make(chan struct{}, 1)
	}
	lock := m.lock
	m.mu.Unlock()
	select {
	case lock <- struct{}{}:
		return func() { <-lock }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func startCA(t *testing.T) (*testenv.Pebble, *memTokens) {
	t.Helper()
	return startCAWith(t, testenv.PebbleOptions{})
}

func startCAWith(t *testing.T, opts testenv.PebbleOptions) (*testenv.Pebble, *memTokens) {
	t.Helper()
	httpPort := testenv.FreePort(t)
	tokens := &memTokens{tokens: map[string]string{}}
	srv := &http.Server{Addr: "127.0.0.1:" + strconv.Itoa(httpPort), Handler: tokens}
	l, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	opts.HTTPPort = httpPort
	return testenv.StartPebble(t, opts), tokens
}

// pebbleClient is a Client of a Pebble started for the test, with its
// account in memory.
type pebbleClient struct {
	pebble   *testenv.Pebble
	tokens   *memTokens
	accounts *memAccounts
	cfg      Config
	client   *Client
}

func startPebbleClient(t *testing.T) pebbleClient {
	t.Helper()
	pebble, tokens := startCA(t)
	p := pebbleClient{pebble: pebble, tokens: tokens, accounts: &memAccounts{},
		cfg: Config{DirectoryURL: pebble.DirectoryURL, Email: "ops@example.test", CARootFiles: []string{pebble.CARootsFile}}}
	var err error
	if p.client, err = New(context.Background(), p.cfg, p.accounts, NewHTTP01Provider(tokens, 0)); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestObtainAgainstPebble(t *testing.T) {
	p := startPebbleClient(t)
	pebble, tokens, accounts, cfg, client := p.pebble, p.tokens, p.accounts, p.cfg, p.client
	ctx := context.Background()
	if accounts.uri == "" || accounts.sets != 1 {
		t.Fatalf("account not registered: %+v", accounts)
	}

	names := []string{"one.example.test", "two.example.test"}
	cert, err := client.Obtain(ctx, names)
	if err != nil {
		t.Fatal(err)
	}
	leaf, intermediates := parseChain(t, cert.FullChain)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "two.example.test", Roots: pebble.Roots(t), Intermediates: intermediates}); err != nil {
		t.Errorf("the issued chain does not verify against Pebble's root: %v", err)
	}
	if _, err := tls.X509KeyPair(cert.FullChain, cert.KeyPEM); err != nil {
		t.Errorf("the key does not match the certificate: %v", err)
	}
	if block, _ := pem.Decode(cert.KeyPEM); block == nil || block.Type != "PRIVATE KEY" {
		t.Error("the key is not PKCS #8 PEM")
	}
	if cert.CertURL == "" || cert.KeyType != "ec256" {
		t.Errorf("metadata: url %q type %q", cert.CertURL, cert.KeyType)
	}
	tokens.mu.Lock()
	left, puts := len(tokens.tokens), tokens.puts
	tokens.mu.Unlock()
	if puts != 2 || left != 0 {
		t.Errorf("%d tokens presented, %d left after the order: want 2 and 0", puts, left)
	}

	// A second client with the same store reuses the account.
	if _, err := New(ctx, cfg, accounts, NewHTTP01Provider(tokens, 0)); err != nil {
		t.Fatal(err)
	}
	if accounts.sets != 1 {
		t.Error("a second agent registered a new account instead of reusing the stored one")
	}
}

func TestObtainFailsClearlyWhenValidationFails(t *testing.T) {
	pebble, tokens := startCA(t)
	tokens.broken = true
	client, err := New(context.Background(), Config{DirectoryURL: pebble.DirectoryURL, CARootFiles: []string{pebble.CARootsFile}},
		&memAccounts{}, NewHTTP01Provider(tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Obtain(context.Background(), []string{"unserved.example.test"})
	if err == nil || !strings.Contains(err.Error(), "obtaining certificate for unserved.example.test") {
		t.Fatalf("error %v: want a wrapped validation failure", err)
	}
}

// TestObtainNamesTheAuthorizationThatFailed: the order is polled, not each
// authorization, and when it turns invalid the error is the failed
// authorization's, with the CA's problem, as when each was polled; every
// answer was published and is withdrawn.
func TestObtainNamesTheAuthorizationThatFailed(t *testing.T) {
	p := startPebbleClient(t)
	p.tokens.brokenHost = "bad.example.test"
	_, err := p.client.Obtain(context.Background(), []string{"good.example.test", "bad.example.test"})
	var problem *acme.ProblemDetails
	if err == nil || !strings.Contains(err.Error(), "authorizing bad.example.test") || !errors.As(err, &problem) ||
		problem.Type != "urn:ietf:params:acme:error:unauthorized" {
		t.Fatalf("error %v: want the failed authorization's, with the CA's unauthorized problem", err)
	}
	p.tokens.mu.Lock()
	defer p.tokens.mu.Unlock()
	if p.tokens.puts != 2 || len(p.tokens.tokens) != 0 {
		t.Errorf("%d answers published, %d left after the order: want 2 and 0", p.tokens.puts, len(p.tokens.tokens))
	}
}

func TestNewFailsWhenTheCAIsDown(t *testing.T) {
	port := testenv.FreePort(t)
	_, err := New(context.Background(), Config{DirectoryURL: "https://127.0.0.1:" + strconv.Itoa(port) + "/dir"},
		&memAccounts{}, NewHTTP01Provider(&memTokens{}, 0))
	want := "CA unreachable: connection refused at https://127.0.0.1:" + strconv.Itoa(port) + "/dir"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v: want %q, the cause first", err, want)
	}
}

func TestConfigRejectsUnknownKeyType(t *testing.T) {
	_, err := New(context.Background(), Config{KeyType: "dsa"}, &memAccounts{}, nil)
	if err == nil || !strings.Contains(err.Error(), "unknown key type") {
		t.Errorf("error %v: want unknown key type", err)
	}
}

func TestKeyTypes(t *testing.T) {
	for _, kt := range []string{"ec256", "ec384", "rsa2048"} {
		key, err := generateKey(kt)
		if err != nil {
			t.Fatalf("%s: %v", kt, err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if err != nil || back == nil {
			t.Errorf("%s: round trip: %v", kt, err)
		}
	}
	if _, err := parseKey([]byte("garbage")); err == nil {
		t.Error("parseKey(garbage): want an error")
	}
}

func parseChain(t *testing.T, chainPEM []byte) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) < 2 {
		t.Fatalf("chain has %d certificates, want the leaf and an intermediate", len(certs))
	}
	pool := x509.NewCertPool()
	for _, c := range certs[1:] {
		pool.AddCert(c)
	}
	return certs[0], pool
}

func TestHTTPClientSkipsEmptyRootFiles(t *testing.T) {
	// CERTAGENT_CA_ROOTS set but empty gives [""]: system roots only, no error.
	if _, err := httpClient([]string{""}); err != nil {
		t.Errorf("httpClient([\"\"]): %v", err)
	}
	if _, err := httpClient([]string{"/nonexistent/roots.pem"}); err == nil {
		t.Error("httpClient of a missing file: no error")
	}
}
