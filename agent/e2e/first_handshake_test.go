package e2e

// The first handshake's wait (docs/lua.md, first_handshake_wait): through
// real nginx, Redis, Pebble and the agent. Timing is asserted only with
// generous bounds (well under first_handshake_wait): the machines running
// these tests are shared and noisy; what the handshake ended by is read from
// nginx's status counters instead.

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// The status counters of the wait (docs/lua.md, lua/certagent/stats.lua).
const (
	metricWaits       = "certagent_nginx_waits_total"             // handshakes held
	metricWaitResults = "certagent_nginx_wait_results_total"      // {result}: how a wait ended
	metricTurnedAway  = "certagent_nginx_waits_turned_away_total" // max_waiting reached: fallback at once
	metricPollers     = "certagent_nginx_wait_pollers_total"      // one per name per worker
	metricWaitingMax  = "certagent_nginx_waiting_highest"         // {worker}: most held at once
	metricFallback    = "certagent_nginx_fallback_total"
)

// waitSeconds is first_handshake_wait in these tests: longer than the
// default, so that a wait that ends by its deadline stands apart from one
// ended by a certificate, a refusal or the grace, even on a slow machine.
const waitSeconds = 10

// issuingGrace is first_handshake_grace where a test needs the agent's
// issuing mark to be seen: the default 250 ms is ample for an agent that
// blocks on the stream, but not for one that a loaded machine leaves
// unscheduled for a moment.
const issuingGrace = "2"

// startWaitNginx starts an nginx of the fleet on s's Redis with the fields
// lua in its configuration table (see waitConfig) and the status location
// on its HTTP server. httpPort 0 picks a free port (this nginx then does not
// answer Pebble's validations; the stack's own nginx does). Its worker has
// room for the 200 handshakes of the flood test besides its Redis
// connections and the timers that record names.
func (s *stack) startWaitNginx(t *testing.T, node string, httpPort int, lua map[string]string) *testenv.Nginx {
	t.Helper()
	return testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:          s.redis.URL,
		HTTPPort:          httpPort,
		Env:               map[string]string{"CERTAGENT_NODE": node},
		LuaConfig:         lua,
		HTTPServerExtra:   "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-status.conf") + ";",
		WorkerConnections: 1024,
	})
}

// waitConfig sets first_handshake_wait to wait seconds (0: off) and the
// further fields of extra (field, Lua value, field, Lua value ...).
func waitConfig(wait int, extra ...string) map[string]string {
	c := map[string]string{"first_handshake_wait": strconv.Itoa(wait)}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i]] = extra[i+1]
	}
	return c
}

// startWaitStack is startStack with the wait on in its nginx: Redis, Pebble
// (validating against this nginx) and nginx, no agent yet.
func startWaitStack(t *testing.T, lua map[string]string) *stack {
	t.Helper()
	s := &stack{redis: testenv.StartRedis(t), agent: testenv.BuildBinary(t, "./agent/cmd/certagent")}
	httpPort := testenv.FreePort(t)
	s.pebble, s.ca = startCA(t, testenv.PebbleOptions{HTTPPort: httpPort})
	s.nginx = s.startWaitNginx(t, "wait-on", httpPort, lua)
	s.env = append(os.Environ(),
		"CERTAGENT_REDIS_URL="+s.redis.URL,
		"CERTAGENT_ACME_DIRECTORY="+s.ca.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+s.ca.CARootsFile,
		"CERTAGENT_EMAIL=ops@example.test",
	)
	return s
}

// statusOf reads nginx's status location: every sample as
// `name{label="value",...}` (labels sorted as served) to its value.
func statusOf(t *testing.T, n *testenv.Nginx) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr + "/certagent-status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status location: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the status location: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			default:
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// sum adds the samples of metric whose labels include every pair of labels
// (`k="v"` strings); no labels sums all of them.
func sum(status map[string]float64, metric string, labels ...string) float64 {
	var total float64
next:
	for key, v := range status {
		name, rest, _ := strings.Cut(key, "{")
		if name != metric {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				continue next
			}
		}
		total += v
	}
	return total
}

// highest is the largest sample of metric (over the workers).
func highest(status map[string]float64, metric string) float64 {
	best := -1.0
	for key, v := range status {
		if name, _, _ := strings.Cut(key, "{"); name == metric && v > best {
			best = v
		}
	}
	return best
}

// timedHandshake is handshakeAt that also says how long it took.
func timedHandshake(t *testing.T, addr, name string) ([]*x509.Certificate, time.Duration) {
	t.Helper()
	start := time.Now()
	chain, err := handshakeAt(addr, name)
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	return chain, time.Since(start)
}

func verifiesAgainstPebble(t *testing.T, s *stack, chain []*x509.Certificate, name string) {
	t.Helper()
	if chain[0].Equal(s.nginx.FallbackCert) {
		t.Fatalf("%s: served the fallback certificate, want the issued one", name)
	}
	if err := s.verifies(t, chain, name); err != nil {
		t.Fatalf("%s: served certificate does not verify against Pebble's root: %v", name, err)
	}
}

// results returns how the waits of st ended, for messages.
func results(st map[string]float64) string {
	var out []string
	for _, r := range []string{"certificate", "refused", "grace", "deadline", "error"} {
		out = append(out, fmt.Sprintf("%s %v", r, sum(st, metricWaitResults, `result="`+r+`"`)))
	}
	return fmt.Sprintf("%v waits (%s), %v turned away, %v pollers, highest waiting %v",
		sum(st, metricWaits), strings.Join(out, ", "), sum(st, metricTurnedAway), sum(st, metricPollers),
		highest(st, metricWaitingMax))
}

// TestHandshakeWaitFirstVisitorGetsTheRealCertificate: with the wait on, the
// very first handshake of a new allowed name is held until its certificate
// exists and gets it; an nginx of the same fleet with the wait off serves the
// fallback first, as before, and the certificate on a later handshake.
func TestHandshakeWaitFirstVisitorGetsTheRealCertificate(t *testing.T) {
	s := startWaitStack(t, waitConfig(waitSeconds, "first_handshake_grace", issuingGrace))
	off := s.startWaitNginx(t, "wait-off", 0, waitConfig(0))
	s.startAgent(t, "--allow", "*.example.test", "--consumer", "wait")

	const name = "first-visit.example.test"
	chain, took := timedHandshake(t, s.nginx.HTTPSAddr, name)
	verifiesAgainstPebble(t, s, chain, name)
	st := statusOf(t, s.nginx)
	t.Logf("wait on: the first handshake of %s got its certificate after %s; %s", name, took.Round(time.Millisecond), results(st))
	if sum(st, metricWaits) != 1 || sum(st, metricWaitResults, `result="certificate"`) != 1 {
		t.Errorf("want one wait, ended by the certificate: %s", results(st))
	}
	if n := sum(st, metricFallback); n != 0 {
		t.Errorf("%s = %v, want 0", metricFallback, n)
	}
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders, want 1", n)
	}

	// The wait off: the fallback first, then the certificate, as before.
	const other = "wait-off.example.test"
	first, err := handshakeAt(off.HTTPSAddr, other)
	if err != nil {
		t.Fatal(err)
	}
	if !first[0].Equal(off.FallbackCert) {
		t.Fatalf("wait off: the first handshake of %s got %v, want the fallback certificate", other, first[0].DNSNames)
	}
	chain = waitCert(t, off.HTTPSAddr, other, off.FallbackCert)
	if err := s.verifies(t, chain, other); err != nil {
		t.Errorf("wait off: served certificate for %s does not verify: %v", other, err)
	}
	if st := statusOf(t, off); sum(st, metricWaits) != 0 || sum(st, metricTurnedAway) != 0 {
		t.Errorf("wait off: the nginx held handshakes: %s", results(st))
	}
}

// TestHandshakeWaitDeniedNameGetsTheFallbackWithoutWaiting: a name the policy
// refuses is served the fallback long before first_handshake_wait: its first
// handshake is held only until the agent's refusal (or the grace, if the
// refusal comes later), later ones not at all. The agent has an ask URL that
// says no, so nginx cannot judge the name itself (local_judge_test.go).
func TestHandshakeWaitDeniedNameGetsTheFallbackWithoutWaiting(t *testing.T) {
	s := startWaitStack(t, waitConfig(waitSeconds))
	s.startAgent(t, "--allow", "*.example.test", "--consumer", "deny", "--ask-url", refusingAskURL(t))

	const name = "denied.example.org"
	chain, took := timedHandshake(t, s.nginx.HTTPSAddr, name)
	if !isFallback(s, chain) {
		t.Fatalf("a refused name was served %v, want the fallback certificate", chain[0].DNSNames)
	}
	st := statusOf(t, s.nginx)
	t.Logf("first handshake of a refused name: fallback after %s; %s", took.Round(time.Millisecond), results(st))
	if took > waitSeconds*time.Second/2 {
		t.Errorf("the fallback took %s, want far less than first_handshake_wait (%d s)", took, waitSeconds)
	}
	ended := sum(st, metricWaitResults, `result="refused"`) + sum(st, metricWaitResults, `result="grace"`)
	if sum(st, metricWaits) > 1 || ended != sum(st, metricWaits) {
		t.Errorf("want at most one wait, ended by the refusal or the grace: %s", results(st))
	}

	// Once the agent's refusal is in Redis, nothing holds the name.
	waitUntil(t, "the agent's refused mark", func() bool {
		v, _ := s.redis.Client.Get(t.Context(), "certagent:issuing:"+name).Result()
		return strings.HasPrefix(v, "refused ")
	})
	before := statusOf(t, s.nginx)
	for range 3 {
		chain, took := timedHandshake(t, s.nginx.HTTPSAddr, name)
		if !isFallback(s, chain) {
			t.Fatal("a later handshake of the refused name did not get the fallback")
		}
		if took > waitSeconds*time.Second/2 {
			t.Errorf("a later handshake took %s", took)
		}
	}
	after := statusOf(t, s.nginx)
	if held := sum(after, metricWaits) - sum(before, metricWaits); held != 0 {
		t.Errorf("%v later handshakes of a refused name were held: before %s; after %s", held, results(before), results(after))
	}
	if n := s.pebble.OrdersCreated(t); n != 0 {
		t.Errorf("a refused name reached the CA (%d orders)", n)
	}
}

// TestHandshakeWaitWithTheAgentDown: no agent runs, so no issuing mark ever
// appears; a handshake for a new name is held for the grace only, then gets
// the fallback.
func TestHandshakeWaitWithTheAgentDown(t *testing.T) {
	s := &stack{redis: testenv.StartRedis(t)}
	s.nginx = s.startWaitNginx(t, "no-agent", 0, waitConfig(waitSeconds))

	names := []string{"down-1.example.test", "down-2.example.test", "down-3.example.test"}
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			chain, err := handshakeAt(s.nginx.HTTPSAddr, name)
			took := time.Since(start)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			if !isFallback(s, chain) {
				t.Errorf("%s: served %v, want the fallback certificate", name, chain[0].DNSNames)
			}
			if took > waitSeconds*time.Second/2 {
				t.Errorf("%s: the fallback took %s, want about first_handshake_grace, far less than first_handshake_wait (%d s)",
					name, took, waitSeconds)
			}
			t.Logf("%s: fallback after %s", name, took.Round(time.Millisecond))
		}()
	}
	wg.Wait()
	st := statusOf(t, s.nginx)
	t.Logf("%s", results(st))
	if sum(st, metricWaits) != float64(len(names)) || sum(st, metricWaitResults, `result="grace"`) != float64(len(names)) {
		t.Errorf("want %d waits, every one ended by the grace: %s", len(names), results(st))
	}
	if n := s.redis.Client.XLen(t.Context(), "certagent:requests").Val(); n != int64(len(names)) {
		t.Errorf("the requests stream holds %d entries, want the %d names, recorded for the agent's return", n, len(names))
	}
}

// TestHandshakeWaitIsBoundedUnderAFloodOfUnknownNames: 200 handshakes at
// once, each for a new name no rule allows and an ask URL refuses (so nginx
// cannot judge them itself); never more than first_handshake_max_waiting of
// them are held, and every one completes with the fallback.
func TestHandshakeWaitIsBoundedUnderAFloodOfUnknownNames(t *testing.T) {
	const maxWaiting, total = 8, 200
	s := startWaitStack(t, waitConfig(waitSeconds, "first_handshake_max_waiting", strconv.Itoa(maxWaiting)))
	s.startAgent(t, "--allow", "*.example.test", "--consumer", "flood", "--ask-url", refusingAskURL(t))

	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	var slowest time.Duration
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("scan-%03d.example.net", i)
			<-start
			t0 := time.Now()
			chain, err := handshakeAt(s.nginx.HTTPSAddr, name)
			took := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			switch {
			case err != nil:
				failed = append(failed, name+": "+err.Error())
			case !isFallback(s, chain):
				failed = append(failed, name+": not the fallback")
			}
		}()
	}
	close(start)
	wg.Wait()
	st := statusOf(t, s.nginx)
	t.Logf("%d handshakes at once, slowest %s; %s", total, slowest.Round(time.Millisecond), results(st))
	if len(failed) > 0 {
		t.Errorf("%d of %d handshakes failed or did not get the fallback, e.g. %s", len(failed), total, failed[0])
	}
	if log := s.nginx.ErrorLog(); strings.Contains(log, "worker_connections are not enough") {
		t.Error("nginx ran out of worker_connections: the flood did not reach certagent's bound")
	}
	if h := highest(st, metricWaitingMax); h > maxWaiting || h < 1 {
		t.Errorf("%s = %v, want 1 to first_handshake_max_waiting (%d)", metricWaitingMax, h, maxWaiting)
	}
	if n := sum(st, metricWaitResults, `result="certificate"`) + sum(st, metricWaitResults, `result="deadline"`); n != 0 {
		t.Errorf("waits for never-allowed names ended by a certificate or the deadline: %s", results(st))
	}
	if n := s.pebble.OrdersCreated(t); n != 0 {
		t.Errorf("the flood caused %d orders", n)
	}
}

// TestHandshakeWaitManyVisitorsOfANewNameShareOneOrder: 50 first handshakes
// at once for the same new name: one order at the CA, and every one of them
// gets the issued certificate.
func TestHandshakeWaitManyVisitorsOfANewNameShareOneOrder(t *testing.T) {
	const visitors = 50
	s := startWaitStack(t, waitConfig(waitSeconds, "first_handshake_grace", issuingGrace))
	s.startAgent(t, "--allow", "*.example.test", "--consumer", "crowd")

	const name = "crowd.example.test"
	start := make(chan struct{})
	chains := make([][]*x509.Certificate, visitors)
	errs := make([]error, visitors)
	var wg sync.WaitGroup
	for i := range visitors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			chains[i], errs[i] = handshakeAt(s.nginx.HTTPSAddr, name)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d handshakes of %s done after %s", visitors, name, time.Since(t0).Round(time.Millisecond))
	for i := range visitors {
		if errs[i] != nil {
			t.Fatalf("handshake %d: %v", i, errs[i])
		}
		verifiesAgainstPebble(t, s, chains[i], name)
		if !chains[i][0].Equal(chains[0][0]) {
			t.Errorf("handshake %d got another certificate than handshake 0", i)
		}
	}
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("Pebble created %d orders for one name, want 1", n)
	}
	st := statusOf(t, s.nginx)
	t.Logf("%s", results(st))
	if w, c := sum(st, metricWaits), sum(st, metricWaitResults, `result="certificate"`); w != c || w < 1 {
		t.Errorf("want every held handshake released by the certificate: %s", results(st))
	}
	if n := sum(st, metricFallback); n != 0 {
		t.Errorf("%s = %v, want 0", metricFallback, n)
	}
	if n := sum(st, metricPollers); n != 1 {
		t.Errorf("%s = %v: the handshakes of one name should share one wait", metricPollers, n)
	}
}
