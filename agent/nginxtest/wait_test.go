package nginxtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// The status series of the first handshake's wait (docs/lua.md).
const (
	waits        = "certagent_nginx_waits_total"
	waitCert     = `certagent_nginx_wait_results_total{result="certificate"}`
	waitRefused  = `certagent_nginx_wait_results_total{result="refused"}`
	waitGrace    = `certagent_nginx_wait_results_total{result="grace"}`
	waitDeadline = `certagent_nginx_wait_results_total{result="deadline"}`
	waitError    = `certagent_nginx_wait_results_total{result="error"}`
	turnedAway   = "certagent_nginx_waits_turned_away_total"
	pollers      = "certagent_nginx_wait_pollers_total"
	polls        = "certagent_nginx_wait_polls_total"
	waiting0     = `certagent_nginx_waiting{worker="0"}`
	highest0     = `certagent_nginx_waiting_highest{worker="0"}`
)

// startWait starts Redis and nginx (one worker) with the status location,
// the given configuration values and further port-80 server lines. The
// worker has room for 200 handshakes at once besides its Redis connections
// and the timers that record names. It returns once the worker has made its
// first read of the changes stream: that read empties the cache, and a
// lookup in flight meanwhile is not cached (certagent.cache), so a test that
// counts the lookups after a first handshake must not race it.
func startWait(t *testing.T, luaConfig map[string]string, extra string) *env {
	t.Helper()
	return startWaitSeeded(t, luaConfig, extra, nil)
}

// startWaitSeeded is startWait with seed writing to Redis before nginx starts.
func startWaitSeeded(t *testing.T, luaConfig map[string]string, extra string, seed func(e *env)) *env {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	// The tests count how waits end: a handshake's command that outlasts the
	// default read_timeout (200 ms) on a loaded machine would start an outage
	// and end a wait early. A second holds; a test may set its own.
	config := map[string]string{"read_timeout": "1000"}
	maps.Copy(config, luaConfig)
	r := testenv.StartRedis(t)
	prefix := "wt" + strconv.Itoa(os.Getpid()%1000) + ":"
	e := &env{t: t, redis: r, prefix: prefix, schema: schema}
	if seed != nil {
		seed(e)
	}
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:  r.URL,
		KeyPrefix: prefix,
		Env:       map[string]string{"CERTAGENT_NODE": testNode},
		LuaConfig: config,
		HTTPServerExtra: "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-status.conf") + ";\n" +
			statsLocation + extra,
		WorkerConnections: 1024,
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	e.nginx = n
	e.waitChangesRead()
	return e
}

// mark sets the issuing mark of name as the agent does (SET ... EX 60).
func (e *env) mark(name, value string) {
	e.t.Helper()
	if err := e.redis.Client.Set(context.Background(), e.key("issuing", "name", name), value, 60*time.Second).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// agentStores does what the agent does once an order succeeded: the
// record and its changes entry in one MULTI, then the mark deleted. It
// returns its error instead of failing the test, for goroutines.
func (e *env) agentStores(name string, l leaf) error {
	ctx := context.Background()
	k := e.key("cert", "name", name)
	changes := e.key("changes")
	_, err := e.redis.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, k)
		p.HSet(ctx, k, leafFields(l))
		p.XAdd(ctx, &redis.XAddArgs{Stream: changes, MaxLen: 1000, Approx: true, Values: []any{"name", name, "op", "put"}})
		return nil
	})
	if err != nil {
		return err
	}
	return e.redis.Client.Del(ctx, e.key("issuing", "name", name)).Err()
}

// storeAfter runs agentStores for name after d in a goroutine; the returned
// function waits for it and fails the test on its error.
func (e *env) storeAfter(d time.Duration, name string, l leaf) func() {
	done := make(chan error, 1)
	go func() {
		time.Sleep(d)
		done <- e.agentStores(name, l)
	}()
	return func() {
		e.t.Helper()
		if err := <-done; err != nil {
			e.t.Fatalf("storing %s: %v", name, err)
		}
	}
}

// timedHandshake is mustHandshake that also says how long it took.
func (e *env) timedHandshake(name string) (*x509.Certificate, time.Duration) {
	e.t.Helper()
	start := time.Now()
	c := e.mustHandshake(name)
	return c, time.Since(start)
}

// commands sums the calls of the given Redis commands (INFO commandstats).
func (e *env) commands(cmds ...string) int64 {
	e.t.Helper()
	var sum int64
	for _, c := range cmds {
		n, err := e.redis.CommandCalls(c)
		if err != nil {
			e.t.Fatal(err)
		}
		sum += n
	}
	return sum
}

// wantCounters fails for each series whose value differs from expected.
func (e *env) wantCounters(what string, expected map[string]float64) map[string]float64 {
	e.t.Helper()
	got := e.scrape()
	for k, v := range expected {
		if got[k] != v {
			e.t.Errorf("%s: %s = %v, want %v", what, k, got[k], v)
		}
	}
	return got
}

// TestWaitServesTheFirstHandshake: a name the agent is issuing is held, and
// its first handshake gets the certificate stored during the wait, which is
// then cached like any other; with first_handshake_wait = 0 the first
// handshake gets the fallback, as before the wait existed.
func TestWaitServesTheFirstHandshake(t *testing.T) {
	t.Run("on", func(t *testing.T) {
		e := startWait(t, map[string]string{"first_handshake_wait": "10"}, "")
		const name = "first.wait.test"
		l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
		e.mark(name, "issuing")
		stored := e.storeAfter(300*time.Millisecond, name, l)
		got, took := e.timedHandshake(name)
		stored()
		if !got.Equal(l.cert) {
			t.Fatalf("the first handshake got %q, want the certificate stored during it", got.Subject.CommonName)
		}
		if took < 250*time.Millisecond || took > 5*time.Second {
			t.Errorf("the first handshake took %s; it should have been held until the certificate was stored (300 ms)", took)
		}
		e.wantCounters("after the held handshake", map[string]float64{waits: 1, waitCert: 1, pollers: 1,
			waitGrace: 0, waitDeadline: 0, waitRefused: 0, waitError: 0, turnedAway: 0,
			"certagent_nginx_fallback_total": 0, waiting0: 0, highest0: 1})
		// The certificate is in the worker's cache now: no Redis lookup.
		before := e.commands("hmget", "get")
		for i := 0; i < 3; i++ {
			if got := e.mustHandshake(name); !got.Equal(l.cert) {
				t.Fatalf("handshake %d after the wait got %q", i, got.Subject.CommonName)
			}
		}
		if after := e.commands("hmget", "get"); after != before {
			t.Errorf("%d Redis lookups for handshakes after the wait, want none (cached)", after-before)
		}
		e.wantCounters("after three more", map[string]float64{waits: 1,
			`certagent_nginx_certificates_served_total{source="worker_lru"}`: 3})
	})
	t.Run("off", func(t *testing.T) {
		e := startWait(t, map[string]string{"first_handshake_wait": "0"}, "")
		const name = "off.wait.test"
		l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
		e.mark(name, "issuing")
		stored := e.storeAfter(300*time.Millisecond, name, l)
		got := e.mustHandshake(name)
		stored()
		if !e.isFallback(got) {
			t.Fatalf("with the wait off the first handshake got %q, want the fallback", got.Subject.CommonName)
		}
		e.wantCounters("with the wait off", map[string]float64{waits: 0, polls: 0, pollers: 0,
			"certagent_nginx_fallback_total": 1})
		waitFor(t, "the stored certificate", func() bool {
			c, err := e.handshake(name)
			return err == nil && c.Equal(l.cert)
		})
	})
}

// TestWaitRefused: a name the agent refused is not held at all, nor asked
// about again for negative_ttl; a refusal that arrives during a wait ends it.
func TestWaitRefused(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "10"}, "")
	const name = "refused.wait.test"
	e.mark(name, "refused policy: no allow rule")
	got, took := e.timedHandshake(name)
	if !e.isFallback(got) {
		t.Fatalf("a refused name got %q, want the fallback", got.Subject.CommonName)
	}
	if took > 2*time.Second {
		t.Errorf("the refused name's handshake took %s, want no wait", took)
	}
	e.wantCounters("after a refused name", map[string]float64{waits: 0, polls: 0, pollers: 0, highest0: 0})
	// Remembered: more handshakes neither wait nor ask Redis.
	before := e.commands("hmget", "get")
	for i := 0; i < 5; i++ {
		if got := e.mustHandshake(name); !e.isFallback(got) {
			t.Fatalf("a refused name got %q, want the fallback", got.Subject.CommonName)
		}
	}
	if after := e.commands("hmget", "get"); after != before {
		t.Errorf("%d Redis lookups for handshakes of a refused name, want none", after-before)
	}
	e.wantCounters("after more handshakes of the refused name", map[string]float64{waits: 0, polls: 0})

	// Issuing, then refused (a pre-flight check failed) during the wait.
	const later = "later.wait.test"
	e.mark(later, "issuing")
	go func() {
		time.Sleep(300 * time.Millisecond)
		e.redis.Client.Set(context.Background(), e.key("issuing", "name", later), "refused pre-flight: no address", 60*time.Second)
	}()
	got, took = e.timedHandshake(later)
	if !e.isFallback(got) {
		t.Fatalf("%s got %q, want the fallback", later, got.Subject.CommonName)
	}
	if took > 5*time.Second {
		t.Errorf("the handshake took %s; the refusal should have ended its wait (deadline 10 s)", took)
	}
	e.wantCounters("after a refusal during the wait", map[string]float64{waits: 1, waitRefused: 1, waitDeadline: 0,
		waitGrace: 0, waiting0: 0})
}

// TestWaitGrace: a name no agent marks is held for the grace only, then
// remembered, so that its next handshakes are neither held nor looked up.
func TestWaitGrace(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "10", "negative_ttl": "60"}, "")
	const name = "nomark.wait.test"
	got, took := e.timedHandshake(name)
	if !e.isFallback(got) {
		t.Fatalf("an unmarked name got %q, want the fallback", got.Subject.CommonName)
	}
	if took < 250*time.Millisecond || took > 5*time.Second {
		t.Errorf("the handshake took %s; want the grace (250 ms), far from the deadline (10 s)", took)
	}
	e.wantCounters("after the grace", map[string]float64{waits: 1, waitGrace: 1, waitDeadline: 0, waiting0: 0})
	before := e.commands("hmget", "get")
	for i := 0; i < 5; i++ {
		if got, took := e.timedHandshake(name); !e.isFallback(got) || took > 2*time.Second {
			t.Fatalf("handshake %d of the unmarked name: %q after %s, want the fallback at once", i, got.Subject.CommonName, took)
		}
	}
	if after := e.commands("hmget", "get"); after != before {
		t.Errorf("%d Redis lookups for handshakes of a name just found unmarked, want none", after-before)
	}
	e.wantCounters("after more handshakes", map[string]float64{waits: 1})
	// The grace is the wait's only cost for a name no agent takes: the name
	// was still recorded for the agents.
	waitFor(t, "the request for "+name, func() bool {
		names := e.namesIn()
		return len(names) == 1 && names[0] == name
	})
}

// TestWaitRedisDown: with Redis gone a handshake is not held, and a Redis
// that goes away during a wait ends it; every handshake completes.
func TestWaitRedisDown(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "10"}, "")
	const during = "during.wait.test"
	e.mark(during, "issuing")
	go func() {
		time.Sleep(300 * time.Millisecond)
		e.redis.Stop()
	}()
	got, took := e.timedHandshake(during)
	if !e.isFallback(got) {
		t.Fatalf("%s got %q, want the fallback", during, got.Subject.CommonName)
	}
	if took > 5*time.Second {
		t.Errorf("the handshake took %s; the Redis outage should have ended the wait", took)
	}
	e.wantCounters("after Redis went away during a wait", map[string]float64{waits: 1, waitError: 1, waiting0: 0})
	for _, name := range []string{"down.wait.test", during} {
		got, took := e.timedHandshake(name)
		if !e.isFallback(got) {
			t.Fatalf("%s with Redis down got %q, want the fallback", name, got.Subject.CommonName)
		}
		if took > 2*time.Second {
			t.Errorf("%s with Redis down took %s, want at most the grace", name, took)
		}
	}
	got2 := e.scrape()
	if got2[waits] > 2 || got2[waiting0] != 0 {
		t.Errorf("with Redis down: %s = %v (want at most 2: a name the caches know missing polls once), %s = %v",
			waits, got2[waits], waiting0, got2[waiting0])
	}
}

// hammer runs one handshake per name at once and returns the number that
// failed and that got the fallback.
func (e *env) hammer(names []string) (failed, fallback int, firstErr error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, name := range names {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			<-start
			c, err := e.handshake(name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", name, err)
				}
				return
			}
			if e.isFallback(c) {
				fallback++
			}
		}(name)
	}
	close(start)
	wg.Wait()
	return failed, fallback, firstErr
}

// TestWaitBounded: 200 handshakes at once for names without a certificate
// never hold more than first_handshake_max_waiting in the worker; the rest
// get the fallback at once, and every handshake completes.
func TestWaitBounded(t *testing.T) {
	for _, marked := range []bool{false, true} {
		t.Run(map[bool]string{false: "unmarked names", true: "names marked issuing"}[marked], func(t *testing.T) {
			e := startWait(t, map[string]string{"first_handshake_wait": "1", "first_handshake_max_waiting": "5",
				"request_burst": "300"}, "")
			names := make([]string, 200)
			for i := range names {
				names[i] = fmt.Sprintf("n%d-%d.flood.wait.test", i, time.Now().UnixNano()%1000)
				if marked {
					e.mark(names[i], "issuing")
				}
			}
			start := time.Now()
			failed, fallback, firstErr := e.hammer(names)
			if failed > 0 {
				t.Fatalf("%d of 200 handshakes failed (first: %v)", failed, firstErr)
			}
			if fallback != 200 {
				t.Errorf("%d of 200 got the fallback, want all", fallback)
			}
			got := e.scrape()
			t.Logf("200 handshakes in %s: held %v, turned away %v, highest %v, results grace %v deadline %v, polls %v",
				time.Since(start).Round(time.Millisecond), got[waits], got[turnedAway], got[highest0], got[waitGrace],
				got[waitDeadline], got[polls])
			if log := e.nginx.ErrorLog(); strings.Contains(log, "worker_connections are not enough") {
				t.Error("nginx ran out of worker_connections: the handshakes did not all reach certagent's bound")
			}
			if got[highest0] > 5 || got[highest0] < 1 {
				t.Errorf("%s = %v, want 1 to 5 (first_handshake_max_waiting)", highest0, got[highest0])
			}
			if got[turnedAway] == 0 {
				t.Errorf("%s = 0, want handshakes turned away", turnedAway)
			}
			if got[waits]+got[turnedAway] > 200 || got[waiting0] != 0 {
				t.Errorf("held %v + turned away %v (at most 200), %s = %v (want 0)", got[waits], got[turnedAway],
					waiting0, got[waiting0])
			}
			results := got[waitGrace] + got[waitDeadline] + got[waitCert] + got[waitRefused] + got[waitError]
			if results != got[waits] {
				t.Errorf("%v waits ended, %v were held", results, got[waits])
			}
			// Marked names are held to the deadline, unmarked ones for the
			// grace (a Redis error on a loaded machine may end a few early).
			if wrong := got[waitCert] + got[waitRefused] + map[bool]float64{true: got[waitGrace], false: got[waitDeadline]}[marked]; wrong != 0 {
				t.Errorf("%v held handshakes ended otherwise than by the %s", wrong,
					map[bool]string{true: "deadline", false: "grace"}[marked])
			}
		})
	}
}

// TestWaitShared: 50 handshakes at once for one name share one wait (one
// poller in the worker) and all get the certificate once it is stored.
func TestWaitShared(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "10"}, "")
	const name = "shared.wait.test"
	l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
	e.mark(name, "issuing")
	stored := e.storeAfter(700*time.Millisecond, name, l)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var real, other int
	var errs []error
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.handshake(name)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case c.Equal(l.cert):
				real++
			default:
				other++
			}
		}()
	}
	wg.Wait()
	stored()
	if len(errs) > 0 || real != 50 {
		t.Fatalf("50 handshakes: %d got the certificate, %d something else, errors %v", real, other, errs)
	}
	got := e.scrape()
	if got[pollers] != 1 {
		t.Errorf("%s = %v, want 1: the handshakes of one name share one wait", pollers, got[pollers])
	}
	if got[waits] < 2 || got[waitCert] != got[waits] {
		t.Errorf("%s = %v, %s = %v: want the held handshakes all ended with the certificate", waits, got[waits], waitCert, got[waitCert])
	}
	// One poller, polling every 200 ms at the most: far fewer polls than
	// handshakes.
	if got[polls] >= 25 {
		t.Errorf("%s = %v for one name held 700 ms, want a few (one poller)", polls, got[polls])
	}
	if got[highest0] > 50 || got[waiting0] != 0 {
		t.Errorf("%s = %v, %s = %v", highest0, got[highest0], waiting0, got[waiting0])
	}
}

// TestWaitClientGone: handshakes whose clients give up while held do not
// keep their places for good: once their deadline has passed the gauge is
// back to 0 and the bound admits new ones. (nginx notices the closed
// connection only after the certificate callback returns, so the held
// handshake runs to its end; certagent.wait also frees the place of one
// whose Lua never returns, at its deadline.)
func TestWaitClientGone(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "1", "first_handshake_max_waiting": "3"}, "")
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("gone%d.wait.test", i)
		e.mark(name, "issuing")
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", e.nginx.HTTPSAddr, 5*time.Second)
			if err != nil {
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(200 * time.Millisecond))
			_ = tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
		}()
	}
	wg.Wait()
	const name = "after.wait.test"
	l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
	waitFor(t, "the abandoned handshakes to free their places", func() bool {
		return e.scrape()[waiting0] == 0
	})
	e.mark(name, "issuing")
	stored := e.storeAfter(300*time.Millisecond, name, l)
	got := e.mustHandshake(name)
	stored()
	if !got.Equal(l.cert) {
		t.Fatalf("after abandoned waits, %s got %q, want its certificate through a wait", name, got.Subject.CommonName)
	}
}

// get sends a GET to the port-80 server without following redirects,
// returning an error instead of failing the test (for goroutines).
func (e *env) get(host, path string) (int, http.Header, error) {
	req, err := http.NewRequest("GET", "http://"+e.nginx.HTTPAddr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Host = host
	client := &http.Client{Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header, nil
}

// TestWaitPort80: with certagent-ondemand.conf, http_missing = "503" and
// http_redirect, a request for a name being issued is held like a handshake
// (sharing the name's wait with one) and redirected once the certificate is
// stored; a refused name gets the 503 at once.
func TestWaitPort80(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "10", "http_missing": `"503"`,
		"http_redirect": "true"},
		"include "+filepath.Join(testenv.RepoRoot(), "nginx", "certagent-ondemand.conf")+";\n"+operatorLocation)

	const name = "web.wait.test"
	l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
	e.mark(name, "issuing")
	stored := e.storeAfter(500*time.Millisecond, name, l)
	type answer struct {
		status int
		loc    string
		err    error
	}
	web := make(chan answer, 1)
	go func() {
		status, h, err := e.get(name, "/site/page?x=1")
		web <- answer{status, h.Get("Location"), err}
	}()
	tlsDone := make(chan *x509.Certificate, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // the request's wait first
		c, err := e.handshake(name)
		if err != nil {
			c = nil
		}
		tlsDone <- c
	}()
	a := <-web
	c := <-tlsDone
	stored()
	if a.err != nil || a.status != 308 || a.loc != "https://"+name+"/site/page?x=1" {
		t.Fatalf("request for a name being issued: %d Location %q (%v), want a 308 once the certificate was stored",
			a.status, a.loc, a.err)
	}
	if c == nil || !c.Equal(l.cert) {
		t.Fatalf("the handshake held with the request did not get the certificate")
	}
	e.wantCounters("after a request and a handshake held together", map[string]float64{pollers: 1, waits: 2,
		waitCert: 2})

	const refused = "refused-web.wait.test"
	e.mark(refused, "refused policy: no allow rule")
	start := time.Now()
	status, header, _ := e.noRedirect(refused, "/site/page")
	if status != 503 || header.Get("Retry-After") == "" {
		t.Fatalf("a refused name: %d Retry-After %q, want 503 with Retry-After", status, header.Get("Retry-After"))
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the refused name's 503 took %s, want it at once", took)
	}
	e.wantCounters("after a refused name", map[string]float64{waits: 2, pollers: 1})

	// Without a mark: the 503 after the grace.
	status, _, _ = e.noRedirect("nomark-web.wait.test", "/site/page")
	if status != 503 {
		t.Fatalf("an unmarked name: %d, want 503", status)
	}
	e.wantCounters("after an unmarked name", map[string]float64{waits: 3, waitGrace: 1})
	for _, line := range e.errorLines(0) {
		t.Errorf("error log: %s", line)
	}
}

// configLocation validates configuration tables with certagent.config and
// prints one line per table: "ok <wait> <grace> <max_waiting>" or the error.
const configLocation = `
        location = /_test/waitconfig {
            content_by_lua_block {
                local config = require("certagent.config")
                local cases = {
                    {},
                    { first_handshake_wait = 0 },
                    { first_handshake_wait = 60, first_handshake_grace = 1, first_handshake_max_waiting = 3 },
                    { first_handshake_wait = -1 },
                    { first_handshake_wait = 61 },
                    { first_handshake_wait = "5" },
                    { first_handshake_grace = 0 },
                    { first_handshake_max_waiting = 0 },
                    { first_handshake_max_waiting = 2.5 },
                }
                for _, c in ipairs(cases) do
                    local cfg, err = config.new(c)
                    if cfg then
                        ngx.say("ok ", cfg.first_handshake_wait, " ", cfg.first_handshake_grace, " ",
                                cfg.first_handshake_max_waiting)
                    else
                        ngx.say(err)
                    end
                end
            }
        }
`

// TestWaitConfiguration: the three fields of the wait are validated like the
// others, and their defaults are the documented ones.
func TestWaitConfiguration(t *testing.T) {
	e := startWait(t, nil, configLocation)
	status, _, body := e.request("GET", "localhost", "/_test/waitconfig")
	if status != 200 {
		t.Fatalf("config location: %d %q", status, body)
	}
	lines := strings.Split(strings.TrimSpace(body), "\n")
	want := []string{
		"ok 4 0.25 64",
		"ok 0 0.25 64",
		"ok 60 1 3",
		"first_handshake_wait must be",
		"first_handshake_wait must be",
		"first_handshake_wait must be",
		"first_handshake_grace must be a positive number",
		"first_handshake_max_waiting must be a positive number",
		"first_handshake_max_waiting must be a whole number",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), body)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("case %d: %q, want %q...", i, lines[i], w)
		}
	}
}

// TestWaitFollowsTheChangesStream: a held handshake gets its certificate as
// soon as the agent's changes entry for it arrives (the worker follows the
// stream with a blocking read while it holds handshakes), not at the poll
// after the write; once the issuing mark is seen the polls are spaced out.
// Eight names held at once, each stored at its own moment: with polls alone
// (every 250 ms once issuing) a handshake would end about 125 ms after its
// store on average; followed, a few milliseconds.
func TestWaitFollowsTheChangesStream(t *testing.T) {
	e := startWait(t, map[string]string{"first_handshake_wait": "10"}, "")
	const n = 8
	var wg sync.WaitGroup
	delays := make([]time.Duration, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("follow%d.wait.test", i)
		l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
		e.mark(name, "issuing")
		wg.Add(2)
		var storedAt time.Time
		stored := make(chan struct{})
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(900+97*i) * time.Millisecond)
			storedAt = time.Now()
			errs[i] = e.agentStores(name, l)
			close(stored)
		}()
		go func() {
			defer wg.Done()
			c, err := e.handshake(name)
			ended := time.Now()
			<-stored
			switch {
			case err != nil:
				errs[i] = err
			case !c.Equal(l.cert):
				errs[i] = fmt.Errorf("%s got %q, want its certificate", name, c.Subject.CommonName)
			}
			delays[i] = ended.Sub(storedAt)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	sorted := append([]time.Duration(nil), delays...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a] < sorted[b] })
	if median := sorted[n/2]; median > 60*time.Millisecond {
		t.Errorf("handshakes ended %v after their certificates were stored (median %s); want them served on the changes entry",
			delays, median)
	}
	// Polls once issuing: every 250 ms at most, not every 50 ms (about 25
	// per name over 0.9 to 1.6 s).
	got := e.wantCounters("after the held handshakes", map[string]float64{waits: n, waitCert: n, waitDeadline: 0,
		"certagent_nginx_fallback_total": 0})
	if got[polls] > n*15 {
		t.Errorf("%s = %v for %d names held 0.9 to 1.6 s: the polls were not spaced out", polls, got[polls], n)
	}
}
