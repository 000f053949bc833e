package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/peer"
	"github.com/certagent/certagent/agent/store"
)

// siteFleet is several sites, each with its own Redis, nginx and agent, and
// one Pebble whose validator reaches only one of the sites' nginx.
type siteFleet struct {
	sites      []*site
	pebble     *testenv.Pebble
	ca         *testenv.CAProxy // in front of pebble
	secretFile string
	secret     []byte
	caFile     string // roots for the peer API's certificate
	certFile   string
	keyFile    string
	syncEvery  time.Duration
}

type site struct {
	id       string
	*stack          // redis, nginx, the agent binary, env
	peerAddr string // the agent's peer API
	agent    *agentProcess
	store    *store.Store
	fleet    *siteFleet
}

// startSites starts len(ids) sites; Pebble validates HTTP-01 against the
// nginx of the site validatedAt only, so a token must have reached that
// site whichever site ordered.
func startSites(t *testing.T, ids []string, validatedAt string) *siteFleet {
	t.Helper()
	f := &siteFleet{syncEvery: 2 * time.Second}
	dir := t.TempDir()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "peer test CA", IsCA: true})
	server := testenv.NewCert(t, testenv.CertSpec{CommonName: "peer", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Parent: ca})
	f.certFile, f.keyFile = server.Write(t, dir, "peer")
	f.caFile = filepath.Join(dir, "peer-ca.pem")
	if err := os.WriteFile(f.caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	f.secret = []byte(hex.EncodeToString(raw))
	f.secretFile = filepath.Join(dir, "peer-secret")
	if err := os.WriteFile(f.secretFile, f.secret, 0o600); err != nil {
		t.Fatal(err)
	}

	agentBin := testenv.BuildBinary(t, "./agent/cmd/certagent")
	httpPorts := map[string]int{}
	for _, id := range ids {
		httpPorts[id] = testenv.FreePort(t)
	}
	f.pebble, f.ca = startCA(t, testenv.PebbleOptions{HTTPPort: httpPorts[validatedAt]})
	for _, id := range ids {
		s := &site{id: id, fleet: f, peerAddr: "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))}
		s.stack = &stack{redis: testenv.StartRedis(t), agent: agentBin, pebble: f.pebble, ca: f.ca}
		s.nginx = testenv.StartNginx(t, testenv.NginxOptions{RedisURL: s.redis.URL, HTTPPort: httpPorts[id],
			HTTPServerExtra: "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-status.conf") + ";"})
		s.store = store.New(s.redis.Client, store.Keys{})
		f.sites = append(f.sites, s)
	}
	for _, s := range f.sites {
		s.env = append(os.Environ(),
			"CERTAGENT_REDIS_URL="+s.redis.URL,
			"CERTAGENT_ACME_DIRECTORY="+f.ca.DirectoryURL,
			"CERTAGENT_CA_ROOTS="+f.ca.CARootsFile,
			"CERTAGENT_EMAIL=ops@example.test",
			"CERTAGENT_SITE="+s.id,
			"CERTAGENT_PEERS="+strings.Join(f.peersOf(s), ","),
			"CERTAGENT_PEER_SECRET_FILE="+f.secretFile,
			"CERTAGENT_PEER_CA="+f.caFile,
		)
	}
	return f
}

func (f *siteFleet) peersOf(s *site) []string {
	var peers []string
	for _, o := range f.sites {
		if o != s {
			peers = append(peers, o.id+"=https://"+o.peerAddr)
		}
	}
	return peers
}

func (f *siteFleet) site(id string) *site {
	for _, s := range f.sites {
		if s.id == id {
			return s
		}
	}
	panic("no site " + id)
}

// start runs the site's agent with its peer API.
func (s *site) start(t *testing.T, args ...string) {
	t.Helper()
	s.agent = s.startAgent(t, append([]string{
		"--allow", "*.example.test", "--consumer", "agent-" + s.id,
		"--peer-listen", s.peerAddr, "--peer-tls-cert", s.fleet.certFile, "--peer-tls-key", s.fleet.keyFile,
		"--peer-sync-interval", s.fleet.syncEvery.String(),
	}, args...)...)
	waitUntil(t, "site "+s.id+"'s peer API", func() bool {
		conn, err := net.DialTimeout("tcp", s.peerAddr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

func (s *site) stop(t *testing.T) {
	t.Helper()
	_ = s.agent.cmd.Process.Kill()
	<-s.agent.exited
}

// serves reports whether the site's nginx serves a certificate for name
// that verifies against Pebble's root, and its fingerprint.
func (s *site) serves(t *testing.T, name string) (bool, string) {
	chain := s.handshake(t, name)
	if isFallback(s.stack, chain) || s.verifies(t, chain, name) != nil {
		return false, ""
	}
	return true, hex.EncodeToString(sumOf(chain[0].Raw))
}

// waitServedEverywhere waits until every site stores a certificate for name,
// then checks that each serves it. It returns when the first site stored it
// and when each site held it, as seen by polling every 20 ms. Until then it
// reads the sites' stores only: a handshake at a site would be a miss there,
// which the site answers by asking its peers for the certificate, and that
// would hide a push that never came.
func (f *siteFleet) waitServedEverywhere(t *testing.T, name string, limit time.Duration) (time.Time, map[string]time.Time) {
	t.Helper()
	var stored time.Time
	when := map[string]time.Time{}
	prints := map[string]bool{}
	deadline := time.Now().Add(limit)
	for len(when) < len(f.sites) {
		for _, s := range f.sites {
			if _, ok := when[s.id]; ok {
				continue
			}
			if rec, err := s.store.GetCert(context.Background(), name); err == nil {
				if stored.IsZero() {
					stored = time.Now()
				}
				when[s.id] = time.Now()
				prints[rec.Fingerprint] = true
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stored at %d of %d sites after %s", name, len(when), len(f.sites), limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(prints) != 1 {
		t.Errorf("the sites hold %d different certificates for %s, want one", len(prints), name)
	}
	for _, s := range f.sites {
		waitUntil(t, "site "+s.id+" to serve "+name, func() bool {
			ok, fp := s.serves(t, name)
			return ok && prints[fp]
		})
	}
	return stored, when
}

// waitPeersUp waits until the agent of every site has recorded every other
// site up: a site skips the pushes to a peer it saw down (at its start, say)
// until its next probe.
func (f *siteFleet) waitPeersUp(t *testing.T) {
	t.Helper()
	for _, s := range f.sites {
		waitUntil(t, "site "+s.id+" to see its peers up", func() bool {
			states, err := s.store.PeerStates(context.Background())
			if err != nil || len(states) != len(f.sites)-1 {
				return false
			}
			for _, p := range states {
				if !p.Up {
					return false
				}
			}
			return true
		})
	}
}

// TestPeerSitesOrderOnceAndServeEverywhere: a miss at site b is ordered once
// for the whole fleet; the CA's validator reaches only site c, so the token
// must be there before validation; and every site serves the certificate.
func TestPeerSitesOrderOnceAndServeEverywhere(t *testing.T) {
	f := startSites(t, []string{"a", "b", "c"}, "c")
	// No inventory exchange after the first: a site that did not order gets
	// the certificate through the push, or not at all.
	f.syncEvery = time.Hour
	for _, s := range f.sites {
		s.start(t)
	}
	f.waitPeersUp(t)
	a, b := f.site("a"), f.site("b")

	const name = "multi.example.test"
	b.handshake(t, name) // the miss, at site b only
	issued, when := f.waitServedEverywhere(t, name, 20*time.Second)
	if n := f.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders for a name three sites serve, want 1", n)
	}
	var slowest time.Duration
	for id, at := range when {
		d := at.Sub(issued)
		t.Logf("site %s holds %s %s after it was stored", id, name, d.Round(time.Millisecond))
		slowest = max(slowest, d)
	}
	t.Logf("slowest site: %s after issuance", slowest.Round(time.Millisecond))

	// Several names at once, misses at every site: still one order each.
	names := makeNames("many", "example.test", 6)
	for i, n := range names {
		f.sites[i%3].handshake(t, n)
		f.sites[(i+1)%3].handshake(t, n)
	}
	for _, n := range names {
		_, _ = f.waitServedEverywhere(t, n, 30*time.Second)
	}
	if n := f.pebble.OrdersCreated(t); n != 1+len(names) {
		t.Errorf("Pebble created %d orders for %d names, want one each", n, 1+len(names))
	}

	// certagent peers shows both peers reachable from site a.
	out, errOut, code := a.cli(t, "peers", "--json")
	if code != 0 {
		t.Fatalf("certagent peers exited %d: %s", code, errOut)
	}
	var states []struct {
		ID string `json:"id"`
		Up bool   `json:"up"`
	}
	if err := json.Unmarshal([]byte(out), &states); err != nil {
		t.Fatalf("peers --json: %v\n%s", err, out)
	}
	up := map[string]bool{}
	for _, s := range states {
		up[s.ID] = s.Up
	}
	if len(states) != 2 || !up["b"] || !up["c"] {
		t.Errorf("certagent peers at site a: %s", out)
	}
	assertNoKeysInLogs(t, f)
}

// TestPeerSiteDownCatchesUp: site c is down while a certificate is issued
// (the other two are a majority); once back, it serves the certificate
// within one inventory exchange.
func TestPeerSiteDownCatchesUp(t *testing.T) {
	f := startSites(t, []string{"a", "b", "c"}, "a")
	for _, s := range f.sites {
		s.start(t)
	}
	a, c := f.site("a"), f.site("c")
	c.stop(t)

	// No handshake at site c until it holds the certificate: a miss there
	// would make its agent fetch the certificate from a peer, which is not
	// the inventory exchange this test is about.
	const name = "late.example.test"
	a.handshake(t, name)
	waitUntil(t, "issuance at site a", func() bool { ok, _ := a.serves(t, name); return ok })
	if _, err := c.store.GetCert(context.Background(), name); err == nil {
		t.Fatal("site c holds a certificate issued while its agent was down")
	}

	back := time.Now()
	c.start(t)
	waitUntil(t, "site c to catch up", func() bool {
		_, err := c.store.GetCert(context.Background(), name)
		return err == nil
	})
	took := time.Since(back)
	waitUntil(t, "site c to serve "+name, func() bool { ok, _ := c.serves(t, name); return ok })
	t.Logf("site c held %s %s after its agent came back (sync every %s)", name, took.Round(time.Millisecond), f.syncEvery)
	if n := f.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders, want 1", n)
	}
	// Deleting at site a removes it everywhere, and no exchange brings it back.
	if _, errOut, code := a.cli(t, "delete", name); code != 0 {
		t.Fatalf("delete exited %d: %s", code, errOut)
	}
	for _, s := range f.sites {
		waitUntil(t, "the delete at site "+s.id, func() bool {
			_, err := s.store.GetCert(context.Background(), name)
			return err != nil
		})
	}
	time.Sleep(2 * f.syncEvery)
	for _, s := range f.sites {
		if _, err := s.store.GetCert(context.Background(), name); err == nil {
			t.Errorf("site %s holds %s again after the delete", s.id, name)
		}
	}
}

// TestRevokeAtAnotherSite: site b's account orders a certificate, and
// `certagent revoke` at site a, whose own account did not order it, revokes
// it all the same (signed with the certificate's key) and deletes it at
// both sites.
func TestRevokeAtAnotherSite(t *testing.T) {
	f := startSites(t, []string{"a", "b"}, "b")
	for _, s := range f.sites {
		s.start(t)
	}
	f.waitPeersUp(t)
	a, b := f.site("a"), f.site("b")
	ctx := context.Background()

	const name = "revoked-elsewhere.example.test"
	b.handshake(t, name)
	_, _ = f.waitServedEverywhere(t, name, 30*time.Second)
	rec, err := a.store.GetCert(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := a.cli(t, "revoke", "--reason", "keyCompromise", name)
	if code != 0 || !strings.Contains(out, "revoked   "+name) {
		t.Fatalf("revoke at site a exited %d: %s%s", code, out, errOut)
	}
	// The operator learns that this site's account could not do it.
	if !strings.Contains(out, "signed_with=certificate-key") {
		t.Errorf("revoke at site a does not say the certificate's key signed it:\n%s", out)
	}
	if status, reason := f.pebble.CertStatus(t, rec.Serial); status != "Revoked" || reason != 1 {
		t.Errorf("Pebble reports %s (reason %d), want Revoked (1)", status, reason)
	}
	for _, s := range f.sites {
		waitUntil(t, "the revoked certificate's deletion at site "+s.id, func() bool {
			_, err := s.store.GetCert(ctx, name)
			return errors.Is(err, store.ErrNotFound)
		})
	}
	if n := f.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders, want 1", n)
	}
}

// TestPeerAPIRefusesForgeries sends requests a site must refuse to a running
// agent: each is answered 401 or 413 and nothing is written.
func TestPeerAPIRefusesForgeries(t *testing.T) {
	f := startSites(t, []string{"a", "b"}, "a")
	a := f.site("a")
	a.start(t)
	roots := x509.NewCertPool()
	caPEM, _ := os.ReadFile(f.caFile)
	roots.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	base := "https://" + a.peerAddr + peer.PathPrefix

	good, err := peer.NewSigner("b", f.secret)
	if err != nil {
		t.Fatal(err)
	}
	forger, _ := peer.NewSigner("b", []byte(strings.Repeat("x", 64)))
	token := peer.TokenPush{KeyAuthorization: "tok.thumb", TTLSeconds: 60}
	body, _ := json.Marshal(token)
	send := func(signer *peer.Signer, method, path string, body []byte, at time.Time, mutate func(*http.Request)) int {
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
		if signer != nil {
			if err := signer.Sign(req, body, at); err != nil {
				t.Fatal(err)
			}
		}
		if mutate != nil {
			mutate(req)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tokenKey := store.Keys{}.Token("forged.example.test", "tok")
	for _, tc := range []struct {
		what   string
		signer *peer.Signer
		at     time.Time
		body   []byte
		mutate func(*http.Request)
		want   int
	}{
		{"no signature", nil, time.Now(), body, nil, 401},
		{"a forged signature", forger, time.Now(), body, nil, 401},
		{"an expired timestamp", good, time.Now().Add(-10 * time.Minute), body, nil, 401},
		{"a body other than the signed one", good, time.Now(), body, func(r *http.Request) {
			altered := bytes.Replace(body, []byte("tok.thumb"), []byte("tok.evil!"), 1)
			r.Body = io.NopCloser(bytes.NewReader(altered))
		}, 401},
		{"an oversized body", good, time.Now(), bytes.Repeat([]byte(" "), peer.MaxBody+1), nil, 413},
	} {
		if got := send(tc.signer, http.MethodPut, "tokens/forged.example.test/tok", tc.body, tc.at, tc.mutate); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.what, got, tc.want)
		}
		if a.redis.Client.Exists(context.Background(), tokenKey).Val() != 0 {
			t.Fatalf("%s: the token was written", tc.what)
		}
	}
	// A replay of a genuine request is refused.
	req, _ := http.NewRequest(http.MethodPut, base+"tokens/forged.example.test/tok", bytes.NewReader(body))
	if err := good.Sign(req, body, time.Now()); err != nil {
		t.Fatal(err)
	}
	replay := req.Clone(context.Background())
	replay.Body = io.NopCloser(bytes.NewReader(body))
	resp, err := client.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("the genuine request: %v %v", resp, err)
	}
	resp.Body.Close()
	a.redis.Client.Del(context.Background(), tokenKey)
	if resp, err = client.Do(replay); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the replay: %v %v, want 401", resp, err)
	} else {
		resp.Body.Close()
	}
	if a.redis.Client.Exists(context.Background(), tokenKey).Val() != 0 {
		t.Error("the replay wrote the token again")
	}

	// A certificate for another name is refused and not stored.
	other := testenv.NewCert(t, testenv.CertSpec{CommonName: "other.example.test", DNSNames: []string{"other.example.test"}})
	rec, _ := json.Marshal(peer.Record{FullChain: string(other.CertPEM), Key: string(other.KeyPEM), Primary: "victim.example.test"})
	if got := send(good, http.MethodPut, "certs/victim.example.test", rec, time.Now(), nil); got != http.StatusUnprocessableEntity {
		t.Errorf("a certificate for another name: status %d, want 422", got)
	}
	if _, err := a.store.GetCert(context.Background(), "victim.example.test"); err == nil {
		t.Error("a certificate for another name was stored")
	}
	assertNoKeysInLogs(t, f)
}

func assertNoKeysInLogs(t *testing.T, f *siteFleet) {
	t.Helper()
	for _, s := range f.sites {
		if s.agent == nil {
			continue
		}
		logText, _ := os.ReadFile(s.agent.logPath)
		if strings.Contains(string(logText), "PRIVATE KEY") {
			t.Errorf("a private key appeared in site %s's agent log", s.id)
		}
	}
}

func sumOf(der []byte) []byte {
	sum := sha256.Sum256(der)
	return sum[:]
}

// TestPeerListenNeedsASite: an agent told to answer peer sites but given no
// site id refuses to start, instead of running as a single site whose peers
// never reach it.
func TestPeerListenNeedsASite(t *testing.T) {
	s := startStack(t)
	dir := t.TempDir()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "peer test CA", IsCA: true})
	server := testenv.NewCert(t, testenv.CertSpec{CommonName: "peer", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Parent: ca})
	certFile, keyFile := server.Write(t, dir, "peer")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.agent, "run", "--allow", "*.example.test",
		"--peer-listen", "127.0.0.1:"+strconv.Itoa(testenv.FreePort(t)), "--peer-tls-cert", certFile, "--peer-tls-key", keyFile)
	cmd.Env = s.env
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatal("the agent ran with --peer-listen and no --site")
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(errOut.String(), "--site") {
		t.Errorf("run --peer-listen without --site: %v, %s; want exit 2 naming --site", err, errOut.String())
	}
}
