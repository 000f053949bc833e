package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// faultStack is the whole loop with the agents' CA traffic going through a
// CAProxy, which counts orders per name and can take the CA away.
type faultStack struct {
	redis  *testenv.Redis
	pebble *testenv.Pebble
	proxy  *testenv.CAProxy
	nginx  *testenv.Nginx
	agent  string
	env    []string
	dog    *pebbleWatchdog

	retraffic bool
}

type faultOptions struct {
	// holdFirstHandshakes keeps nginx's first_handshake_wait as shipped
	// (a first handshake may be held while its name is issued); by default
	// handshakes here only record names.
	holdFirstHandshakes bool
	pebbleEnv           map[string]string
	redisExtra          []string // e.g. persistence for restart tests
	// retraffic makes waitAllStored send handshakes for the names still
	// missing every few seconds, with nginx recording a name again after
	// 2 s: traffic that goes on, for names whose order failed (a failed
	// name waits for nginx to record it again).
	retraffic bool
	// waitLua, when set, is nginx's Lua configuration with the first
	// handshake's wait on, and the status location is served.
	waitLua map[string]string
}

func startFaultStack(t *testing.T, opts faultOptions) *faultStack {
	t.Helper()
	s := &faultStack{redis: testenv.StartRedisArgs(t, opts.redisExtra...), agent: testenv.BuildBinary(t, "./agent/cmd/certagent")}
	httpPort := testenv.FreePort(t)
	s.pebble = testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: httpPort, Env: opts.pebbleEnv})
	s.proxy = testenv.StartCAProxy(t, s.pebble)
	nginxOpts := testenv.NginxOptions{RedisURL: s.redis.URL, HTTPPort: httpPort, LuaConfig: map[string]string{}}
	if !opts.holdFirstHandshakes {
		nginxOpts.LuaConfig["first_handshake_wait"] = "0"
	}
	if opts.retraffic {
		nginxOpts.LuaConfig["request_window"] = "2"
		s.retraffic = true
	}
	if opts.waitLua != nil {
		nginxOpts.LuaConfig = opts.waitLua
		nginxOpts.HTTPServerExtra = "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-status.conf") + ";"
	}
	s.nginx = testenv.StartNginx(t, nginxOpts)
	s.env = append(os.Environ(),
		"CERTAGENT_REDIS_URL="+s.redis.URL,
		"CERTAGENT_ACME_DIRECTORY="+s.proxy.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+s.proxy.CARootsFile,
		"CERTAGENT_EMAIL=ops@example.test",
		// The fleet's budgets are not under test here: out of the way.
		"CERTAGENT_LIMIT_ORDERS=100000", "CERTAGENT_LIMIT_CERTS=100000", "CERTAGENT_LIMIT_FAILED=100000",
	)
	s.dog = startPebbleWatchdog(t, s.pebble)
	return s
}

// pebbleWatchdog notices when Pebble stops answering (it can deadlock under
// parallel load), so a test fails with that cause instead of a vague timeout.
type pebbleWatchdog struct {
	mu  sync.Mutex
	err error
	// away is set while a test has stopped Pebble on purpose.
	away atomic.Bool
}

func startPebbleWatchdog(t *testing.T, p *testenv.Pebble) *pebbleWatchdog {
	d := &pebbleWatchdog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			if err := p.Alive(ctx); err != nil && ctx.Err() == nil && !d.away.Load() {
				d.mu.Lock()
				d.err = err
				d.mu.Unlock()
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

func (d *pebbleWatchdog) check(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		t.Fatalf("Pebble stopped answering (a known deadlock of Pebble under parallel load, not the agents): %v", d.err)
	}
}

// agentProc is one `certagent run` that the test kills and restarts under
// the same consumer name, its log appended across runs.
type agentProc struct {
	name    string
	args    []string
	env     []string
	bin     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	starts  int
}

func (s *faultStack) newAgent(t *testing.T, name string, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{name: name, bin: s.agent, env: s.env, logPath: filepath.Join(t.TempDir(), name+".log"),
		args: append([]string{"run", "--consumer", name}, args...)}
	a.start(t)
	t.Cleanup(func() {
		a.kill(t)
		if t.Failed() {
			out, _ := os.ReadFile(a.logPath)
			if len(out) > 40000 {
				out = out[len(out)-40000:]
			}
			t.Logf("%s log (tail):\n%s", name, out)
		}
	})
	return a
}

func (a *agentProc) start(t *testing.T) {
	t.Helper()
	logFile, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(a.bin, a.args...)
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", a.name, err)
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	a.starts++
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(cmd, a.exited)
}

// kill sends SIGKILL: no shutdown code runs, leases and pending entries stay.
func (a *agentProc) kill(t *testing.T) {
	t.Helper()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited
	a.cmd = nil
}

// logCount counts lines of the agent's log that contain substr.
func (a *agentProc) logCount(substr string) int {
	out, _ := os.ReadFile(a.logPath)
	return strings.Count(string(out), substr)
}

// request makes nginx see each name in a handshake, which records it in the
// requests stream (the path a real miss takes).
func (s *faultStack) request(t *testing.T, names []string) {
	t.Helper()
	for _, n := range names {
		if _, err := handshakeAt(s.nginx.HTTPSAddr, n); err != nil {
			t.Fatalf("handshake for %s: %v", n, err)
		}
	}
}

// checkStored returns the names that have no valid certificate stored: a
// record whose chain verifies for the name against Pebble's roots, with a
// key that belongs to the leaf.
func (s *faultStack) checkStored(t *testing.T, st *store.Store, names []string) (missing []string) {
	t.Helper()
	roots := s.pebble.Roots(t)
	recs, errs, err := st.GetCerts(context.Background(), names)
	if err != nil {
		return names
	}
	for i, n := range names {
		if errs[i] != nil {
			missing = append(missing, n)
			continue
		}
		if err := verifyRecord(recs[i], n, roots); err != nil {
			missing = append(missing, n+" ("+err.Error()+")")
		}
	}
	return missing
}

func verifyRecord(rec *store.CertRecord, name string, roots *x509.CertPool) error {
	var chain []*x509.Certificate
	rest := []byte(rec.FullChain)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return err
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return fmt.Errorf("no certificate in the chain")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
		return err
	}
	if _, err := tlsPair(rec.FullChain, rec.Key); err != nil {
		return fmt.Errorf("key does not match: %w", err)
	}
	return nil
}

// waitAllStored waits until every name has a valid certificate, or fails
// after limit, naming what is missing.
func (s *faultStack) waitAllStored(t *testing.T, st *store.Store, names []string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	lastTraffic := start
	for {
		s.dog.check(t)
		missing := s.checkStored(t, st, names)
		if len(missing) == 0 {
			return time.Since(start)
		}
		if s.retraffic && time.Since(lastTraffic) > 3*time.Second {
			for _, n := range missing {
				_, _ = handshakeAt(s.nginx.HTTPSAddr, strings.Fields(n)[0])
			}
			lastTraffic = time.Now()
		}
		if time.Since(start) > limit {
			if len(missing) > 10 {
				missing = append(missing[:10], fmt.Sprintf("and %d more", len(missing)-10))
			}
			t.Fatalf("after %s, %d names without a valid certificate: %s", limit, len(missing), strings.Join(missing, ", "))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitDrained waits until the group has no lag and nothing pending.
func waitDrained(t *testing.T, rdb redis.UniversalClient, key string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		groups, err := rdb.XInfoGroups(context.Background(), key).Result()
		if err == nil && len(groups) == 1 && groups[0].Lag == 0 && groups[0].Pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s not drained after %s: %+v %v", key, limit, groups, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// orderReport sums up the CA proxy's view: orders, names with more than one
// order, certificates downloaded, and overlapping orders (must be none).
type orderReport struct {
	orders, multiOrdered, certs, maxOrdersPerName int
	overlaps                                      []string
	longestSpan                                   time.Duration // of one order, first to last request
}

func (s *faultStack) orderReport() orderReport {
	var r orderReport
	per := map[string]int{}
	for _, o := range s.proxy.Orders() {
		r.orders++
		r.certs += o.Certs
		r.longestSpan = max(r.longestSpan, o.Last.Sub(o.Start))
		for _, n := range o.Names {
			per[n]++
		}
	}
	for _, c := range per {
		if c > 1 {
			r.multiOrdered++
		}
		r.maxOrdersPerName = max(r.maxOrdersPerName, c)
	}
	r.overlaps = s.proxy.Overlaps()
	return r
}

func (r orderReport) String() string {
	return fmt.Sprintf("%d orders at the CA, %d certificates downloaded, %d names ordered more than once (at most %d times), %d overlapping orders (longest order %s)",
		r.orders, r.certs, r.multiOrdered, r.maxOrdersPerName, len(r.overlaps), r.longestSpan.Round(10*time.Millisecond))
}

func makeNames(prefix, domain string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%03d.%s", prefix, i, domain)
	}
	return out
}

func tlsPair(chainPEM, keyPEM string) (tls.Certificate, error) {
	return tls.X509KeyPair([]byte(chainPEM), []byte(keyPEM))
}
