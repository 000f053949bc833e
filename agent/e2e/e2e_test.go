// Package e2e runs the whole loop with real processes: redis-server, Pebble
// with its DNS stub, nginx with the repository's snippets and Lua, and the
// certagent binary.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

var netDialer = net.Dialer{Timeout: 5 * time.Second}

type stack struct {
	redis  *testenv.Redis
	pebble *testenv.Pebble
	ca     *testenv.CAProxy // in front of pebble: the CA the agents talk to
	nginx  *testenv.Nginx
	agent  string // the certagent binary
	env    []string
}

func startStack(t *testing.T) *stack {
	t.Helper()
	return startStackLua(t, map[string]string{"first_handshake_wait": "0"})
}

// startStackLua is startStack with nginx's Lua configuration lua.
func startStackLua(t *testing.T, lua map[string]string) *stack {
	t.Helper()
	s := &stack{redis: testenv.StartRedis(t), agent: testenv.BuildBinary(t, "./agent/cmd/certagent")}
	httpPort := testenv.FreePort(t)
	s.pebble, s.ca = startCA(t, testenv.PebbleOptions{HTTPPort: httpPort})
	// The first handshake's wait is off: these tests follow a name from
	// the fallback to its certificate (first_handshake_test.go holds it).
	s.nginx = testenv.StartNginx(t, testenv.NginxOptions{RedisURL: s.redis.URL, HTTPPort: httpPort, LuaConfig: lua})
	s.env = append(os.Environ(),
		"CERTAGENT_REDIS_URL="+s.redis.URL,
		"CERTAGENT_ACME_DIRECTORY="+s.ca.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+s.ca.CARootsFile,
		"CERTAGENT_EMAIL=ops@example.test",
	)
	return s
}

// startCA starts Pebble and, in front of it, the CA proxy that holds every
// request to Let's Encrypt's rules (testenv.CAProxy). The agents talk to the
// proxy, so an order Let's Encrypt would refuse fails the test.
func startCA(t *testing.T, opts testenv.PebbleOptions) (*testenv.Pebble, *testenv.CAProxy) {
	t.Helper()
	pebble := testenv.StartPebble(t, opts)
	return pebble, testenv.StartCAProxy(t, pebble)
}

// handshake connects to nginx with SNI name and returns the chain it serves.
func (s *stack) handshake(t *testing.T, name string) []*x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&netDialer, "tcp", s.nginx.HTTPSAddr, &tls.Config{
		ServerName:         name,
		InsecureSkipVerify: true, // the fallback certificate is expected first
	})
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// verifies reports whether chain is a certificate for name issued by Pebble.
func (s *stack) verifies(t *testing.T, chain []*x509.Certificate, name string) error {
	t.Helper()
	return verifyChain(chain, name, s.pebble.Roots(t))
}

// verifyChain reports whether chain is a certificate for name under roots.
func verifyChain(chain []*x509.Certificate, name string, roots *x509.CertPool) error {
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: intermediates})
	return err
}

func (s *stack) cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(s.agent, args...)
	cmd.Env = s.env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running certagent %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

func isFallback(s *stack, chain []*x509.Certificate) bool {
	return chain[0].Equal(s.nginx.FallbackCert)
}

func TestFirstHandshakeGetsFallbackThenTheIssuedCertificate(t *testing.T) {
	s := startStack(t)
	agent := s.startAgent(t, "--allow", "*.example.test", "--consumer", "e2e")
	logPath := agent.logPath

	const name = "new-1.example.test"
	first := s.handshake(t, name)
	if !isFallback(s, first) {
		t.Fatalf("first handshake served %q, want the fallback certificate", first[0].Subject)
	}
	start := time.Now()
	var served []*x509.Certificate
	for deadline := start.Add(10 * time.Second); ; {
		served = s.handshake(t, name)
		if !isFallback(s, served) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still the fallback certificate 10 s after the first handshake")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("real certificate served %s after the first handshake", time.Since(start).Round(time.Millisecond))
	if err := s.verifies(t, served, name); err != nil {
		t.Fatalf("served certificate does not verify for %s against Pebble's root: %v", name, err)
	}

	// Further handshakes neither order again nor add stream entries.
	for range 20 {
		if chain := s.handshake(t, name); !chain[0].Equal(served[0]) {
			t.Fatal("a later handshake served another certificate")
		}
	}
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders, want 1", n)
	}
	// A name the policy refuses is neither recorded (nginx judges it by the
	// rules the agent published) nor ordered.
	if chain := s.handshake(t, "denied.example.org"); !isFallback(s, chain) {
		t.Error("a refused name was served something other than the fallback")
	}
	time.Sleep(time.Second) // a recording would be out of band
	for _, m := range s.redis.Client.XRange(t.Context(), "certagent:requests", "-", "+").Val() {
		if m.Values["name"] == "denied.example.org" {
			t.Error("a name no published rule allows was recorded")
		}
	}

	// SIGTERM stops the agent cleanly.
	stopAgent(t, agent)
	logText, _ := os.ReadFile(logPath)
	if strings.Contains(string(logText), "PRIVATE KEY") {
		t.Error("a private key appeared in the agent's log")
	}
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders, want 1: the refused name must not be ordered", n)
	}
}

func TestIssueCommand(t *testing.T) {
	s := startStack(t)
	out, errOut, code := s.cli(t, "issue", "--json", "cli-1.example.test", "CLI-2.example.test.")
	if code != 0 {
		t.Fatalf("certagent issue exited %d: %s", code, errOut)
	}
	var issued []struct {
		Name        string    `json:"name"`
		Names       []string  `json:"names"`
		NotAfter    time.Time `json:"not_after"`
		Fingerprint string    `json:"fingerprint_sha256"`
	}
	if err := json.Unmarshal([]byte(out), &issued); err != nil {
		t.Fatalf("issue --json: %v\n%s", err, out)
	}
	if len(issued) != 2 || issued[1].Name != "cli-2.example.test" {
		t.Fatalf("issue --json: %+v", issued)
	}
	for _, want := range issued {
		chain := s.handshake(t, want.Name)
		if err := s.verifies(t, chain, want.Name); err != nil {
			t.Errorf("%s: served certificate does not verify: %v", want.Name, err)
		}
		sum := sha256.Sum256(chain[0].Raw)
		if hex.EncodeToString(sum[:]) != want.Fingerprint {
			t.Errorf("%s: served certificate is not the one issue printed", want.Name)
		}
	}

	// One certificate for several names.
	out, errOut, code = s.cli(t, "issue", "--san", "san-a.example.test", "san-b.example.test")
	if code != 0 || !strings.Contains(out, "issued  san-a.example.test") {
		t.Fatalf("issue --san exited %d: %s %s", code, out, errOut)
	}
	a, b := s.handshake(t, "san-a.example.test"), s.handshake(t, "san-b.example.test")
	if !a[0].Equal(b[0]) || s.verifies(t, b, "san-b.example.test") != nil {
		t.Error("--san: both names should be served the same valid certificate")
	}

	out, _, code = s.cli(t, "list", "--json")
	var listed []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(out), &listed); code != 0 || err != nil {
		t.Fatalf("list --json exited %d: %v\n%s", code, err, out)
	}
	if len(listed) != 3 {
		t.Errorf("list shows %d certificates, want 3: %s", len(listed), out)
	}
	out, _, code = s.cli(t, "list")
	if code != 0 || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "san-a.example.test") {
		t.Errorf("list exited %d:\n%s", code, out)
	}
	out, _, code = s.cli(t, "show", "cli-1.example.test")
	if code != 0 || !strings.Contains(out, issued[0].Fingerprint) || strings.Contains(out, "PRIVATE") {
		t.Errorf("show exited %d:\n%s", code, out)
	}

	// Bad input: a clear error and a non-zero exit.
	for _, args := range [][]string{
		{"issue"},
		{"issue", "bad_name.example.test"},
		{"issue", "1.2.3.4"},
		{"show", "missing.example.test"},
		{"show"},
		{"issue", "--key-type", "dsa", "x.example.test"},
		{"issue", "--ca-roots", "/nonexistent/roots.pem", "x.example.test"},
		{"issue", "--eab-kid", "kid-only", "x.example.test"},
	} {
		_, errOut, code := s.cli(t, args...)
		if code == 0 || strings.TrimSpace(errOut) == "" {
			t.Errorf("certagent %v: exit %d, stderr %q: want a non-zero exit and a message", args, code, errOut)
		}
	}
}

func TestIssueFailsWhenTheCAIsUnreachable(t *testing.T) {
	s := startStack(t)
	cmd := exec.CommandContext(context.Background(), s.agent, "issue", "down.example.test")
	cmd.Env = append(s.env, "CERTAGENT_ACME_DIRECTORY=https://127.0.0.1:1/dir")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 ||
		!strings.Contains(string(out), "CA unreachable: connection refused at https://127.0.0.1:1/dir") {
		t.Errorf("issue with the CA down: %v\n%s", err, out)
	}
}
