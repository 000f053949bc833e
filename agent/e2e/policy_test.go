package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// agentProcess is a `certagent run` started by a test.
type agentProcess struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan error // receives Wait's result once the process ends
}

// startAgent runs `certagent run args...` with the stack's environment until
// the test ends; its output goes to a log whose tail is printed when the test
// fails.
func (s *stack) startAgent(t *testing.T, args ...string) *agentProcess {
	t.Helper()
	p := &agentProcess{logPath: filepath.Join(t.TempDir(), "agent.log"), exited: make(chan error, 1)}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(s.agent, append([]string{"run"}, args...)...)
	p.cmd.Env = s.env
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exited <- p.cmd.Wait()
		logFile.Close()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			out, _ := os.ReadFile(p.logPath)
			if len(out) > 20000 {
				out = out[len(out)-20000:]
			}
			t.Logf("agent log (tail):\n%s", out)
		}
	})
	return p
}

// waitHandled waits until the agents have read and acknowledged every entry
// of the requests stream, and returns how many entries the stream holds.
func (s *stack) waitHandled(t *testing.T, timeout time.Duration) int64 {
	t.Helper()
	ctx := context.Background()
	key := "certagent:requests"
	deadline := time.Now().Add(timeout)
	for {
		groups, err := s.redis.Client.XInfoGroups(ctx, key).Result()
		if err == nil && len(groups) == 1 && groups[0].Lag == 0 && groups[0].Pending == 0 {
			return s.redis.Client.XLen(ctx, key).Val()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent has not handled the stream after %s: groups %+v, %v", timeout, groups, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func handshakeAt(addr, name string) ([]*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&netDialer, "tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// randomName makes the kind of names a scanner sends: random labels under
// random suffixes, some of them not even host names.
func randomName(r *mrand.Rand) string {
	var raw [6]byte
	_, _ = rand.Read(raw[:])
	label := hex.EncodeToString(raw[:])
	switch r.IntN(10) {
	case 0:
		return label // one label
	case 1:
		return label + "_x.example.com" // underscore
	case 2:
		return fmt.Sprintf("%s.%s.example.test.evil", label, label) // under an allowed-looking name
	default:
		tlds := []string{"com", "net", "org", "io", "example", "co.uk"}
		return label + "." + tlds[r.IntN(len(tlds))]
	}
}

// agentCalls sums the Redis commands only the agent's work uses (not its
// idle blocking read, not nginx's polling of the changes stream).
// agentCalls counts the Redis commands of the agent's work: not SET, which
// its heartbeat sends every second.
func agentCalls(t *testing.T, r *testenv.Redis) int64 {
	t.Helper()
	var sum int64
	for _, cmd := range []string{"xack", "hgetall", "smismember", "hincrby", "evalsha", "zadd", "exists"} {
		n, err := r.CommandCalls(cmd)
		if err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}

// flood sends total handshakes with random names, 16 at a time, and fails
// the test for every one that does not get the fallback.
func (s *stack) flood(t *testing.T, total int64) {
	t.Helper()
	const parallel = 16
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := mrand.New(mrand.NewPCG(uint64(w), uint64(start.UnixNano())))
			for next.Add(1) <= total {
				chain, err := handshakeAt(s.nginx.HTTPSAddr, randomName(r))
				if err != nil || !chain[0].Equal(s.nginx.FallbackCert) {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprint(err))
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d handshakes in %s", total, time.Since(start).Round(time.Millisecond))
	if n := failed.Load(); n > 0 {
		t.Errorf("%d handshakes failed or did not get the fallback certificate (first: %v)", n, firstErr.Load())
	}
}

// TestRandomSNIFloodOrdersNothing sends 10,000 handshakes with random names
// through nginx before an agent that allows *.example.test only has
// published its rules (so nginx records them as it did before rules
// existed), then lets the agent work through them; a second flood, with the
// rules published, reaches neither the stream nor the agent.
func TestRandomSNIFloodOrdersNothing(t *testing.T) {
	s := startStack(t)
	s.flood(t, 10000)
	recorded := s.redis.Client.XLen(t.Context(), "certagent:requests").Val()
	if recorded == 0 {
		t.Fatal("no name reached the stream: the flood did not exercise the agent")
	}
	s.startAgent(t, "--allow", "*.example.test", "--consumer", "flood")

	entries := s.waitHandled(t, 2*time.Minute)
	t.Logf("stream: %d entries after the flood", entries)
	if entries > 10100 {
		t.Errorf("the stream holds %d entries, want it bounded near 10000", entries)
	}
	if n := s.pebble.OrdersCreated(t); n != 0 {
		t.Errorf("the flood caused %d ACME orders, want none", n)
	}

	// Idle afterwards: over two of its read blocks the agent does no work.
	before := agentCalls(t, s.redis)
	time.Sleep(4500 * time.Millisecond)
	if after := agentCalls(t, s.redis); after != before {
		t.Errorf("the agent ran %d Redis commands of work with nothing to do", after-before)
	}
	groups, _ := s.redis.Client.XInfoGroups(context.Background(), "certagent:requests").Result()
	if len(groups) != 1 || groups[0].Lag != 0 || groups[0].Pending != 0 {
		t.Errorf("consumer group after the flood: %+v", groups)
	}

	// With the rules published, nginx judges such names itself. The agent
	// published them as it started, and nginx reads them within its
	// changes_interval (1 s) of the announcement: long before the agent has
	// worked through the stream.
	if !s.redis.Client.HExists(t.Context(), "certagent:rules", "static").Val() {
		t.Fatal("the agent has not published its rules")
	}
	s.flood(t, 1000)
	if n := s.redis.Client.XLen(t.Context(), "certagent:requests").Val(); n != entries {
		t.Errorf("the flood with the rules published added %d stream entries, want 0", n-entries)
	}

	// An allowed name still gets its certificate after the flood.
	const name = "after-flood.example.test"
	s.handshake(t, name)
	waitCert(t, s.nginx.HTTPSAddr, name, s.nginx.FallbackCert)
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

// waitCert handshakes until nginx serves something else than fallback.
func waitCert(t *testing.T, addr, name string, fallback *x509.Certificate) []*x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		chain, err := handshakeAt(addr, name)
		if err == nil && !chain[0].Equal(fallback) {
			return chain
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still no certificate after 20 s (last error %v)", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAllowAddMakesTheNextMissIssue runs an agent with no allow rule: nginx
// refuses a name by the rules the agent published, without recording it;
// `certagent allow add` lets the next miss (here at a second nginx of the
// fleet, whose request window is its own) get a certificate.
func TestAllowAddMakesTheNextMissIssue(t *testing.T) {
	s := startStack(t)
	reads := rulesReads(t, s)
	s.startAgent(t, "--consumer", "gate")
	waitRulesRead(t, s, reads)
	const name = "late.example.test"

	if chain := s.handshake(t, name); !isFallback(s, chain) {
		t.Fatal("first handshake: want the fallback certificate")
	}
	time.Sleep(time.Second) // a recording would be out of band
	if n := s.redis.Client.XLen(t.Context(), "certagent:requests").Val(); n != 0 {
		t.Errorf("a name no rule allows was recorded (%d stream entries)", n)
	}
	if n := s.pebble.OrdersCreated(t); n != 0 {
		t.Fatalf("a disallowed name reached the CA (%d orders)", n)
	}

	// Bad input changes nothing.
	if _, errOut, code := s.cli(t, "allow", "add", "good.example.test", "bad_name.example.test"); code != 2 || !strings.Contains(errOut, "bad_name") {
		t.Errorf("allow add with a bad rule: exit %d, %q", code, errOut)
	}
	if out, _, _ := s.cli(t, "allow", "ls"); strings.TrimSpace(out) != "" {
		t.Errorf("allowlist after a refused add: %q, want empty", out)
	}
	if out, errOut, code := s.cli(t, "allow", "add", "LATE.example.test.", "*.Bücher.example"); code != 0 {
		t.Fatalf("allow add: exit %d: %s", code, errOut)
	} else if !strings.Contains(out, "added 2 of 2") {
		t.Errorf("allow add said %q", out)
	}
	if out, _, _ := s.cli(t, "allow", "ls", "--json"); strings.Join(strings.Fields(out), "") != `["*.xn--bcher-kva.example","late.example.test"]` {
		t.Errorf("allow ls --json = %s", out)
	}

	second := testenv.StartNginx(t, testenv.NginxOptions{RedisURL: s.redis.URL, Env: map[string]string{"CERTAGENT_NODE": "second"}})
	chain := waitCert(t, second.HTTPSAddr, name, second.FallbackCert)
	if err := s.verifies(t, chain, name); err != nil {
		t.Errorf("served certificate: %v", err)
	}
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
	if _, _, code := s.cli(t, "allow", "rm", "late.example.test"); code != 0 {
		t.Errorf("allow rm: exit %d", code)
	}
	if out, _, _ := s.cli(t, "allow", "ls"); strings.TrimSpace(out) != "*.xn--bcher-kva.example" {
		t.Errorf("allowlist after rm: %q", out)
	}
}
