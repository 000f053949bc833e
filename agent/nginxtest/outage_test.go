package nginxtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// fleetSocketLocation is a location of the installation's own whose Lua
// connects to addr with a cosocket and answers with what happened. Its
// socket errors must be logged, as lua_socket_log_errors (on by default)
// says: certagent's snippets leave that setting to the installation.
func fleetSocketLocation(t *testing.T, addr string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
        location = /fleet-socket {
            content_by_lua_block {
                local sock = ngx.socket.tcp()
                sock:settimeout(2000)
                local ok, err = sock:connect(%q, %s)
                if ok then
                    sock:close()
                end
                ngx.say(ok and "connected" or err)
            }
        }
`, host, port)
}

// triesWithin is how many times one worker tries an unreachable Redis
// within elapsed at most (lua/certagent/redis.lua): its handshakes once a
// second, its timers after 1 s, the delay doubling up to 30 s, and the
// first failure.
func triesWithin(elapsed time.Duration) int {
	tries := 1 + int(elapsed/time.Second)
	at, delay := 0.0, 1.0
	for {
		at += delay
		if at > elapsed.Seconds() {
			return tries
		}
		tries++
		delay = math.Min(delay*2, 30)
	}
}

// fleetSocket asks the fleet's own location at base (http:// or https://)
// and returns its answer.
func fleetSocket(t *testing.T, client *http.Client, base string) string {
	t.Helper()
	resp, err := client.Get(base + "/fleet-socket")
	if err != nil {
		t.Fatalf("GET %s/fleet-socket: %v", base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(body))
}

// TestRedisOutageLogIsBounded: with Redis stopped for about 10 s under
// steady handshakes (cached names and cache misses), the error log gains
// one line per worker when Redis goes, one when it is back, and a socket
// error line per try, at most one a second for the handshakes and at
// growing intervals for the timers: a number bounded by the retry schedule,
// not by the handshakes. The installation's own cosocket
// errors, in the TLS server that includes certagent-tls.conf and in the
// port-80 server, are all logged. Once Redis is back, the changes poll
// resumes where it stopped and a renewed certificate reaches every worker.
func TestRedisOutageLogIsBounded(t *testing.T) {
	const workers = 2
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	// The records and the changes stream survive the restart, as with the
	// image's Redis.
	r := testenv.StartRedisArgs(t, "--appendonly", "yes", "--appendfsync", "always")
	prefix := "ro" + strconv.Itoa(os.Getpid()%1000) + ":"
	// The fleet's own Lua connects to Redis's address too: refused while
	// Redis is down.
	own := fleetSocketLocation(t, r.Addr)
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:         r.URL,
		KeyPrefix:        prefix,
		Env:              map[string]string{"CERTAGENT_NODE": testNode},
		WorkerProcesses:  workers,
		HTTPServerExtra:  own,
		HTTPSServerExtra: own,
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	e := &env{t: t, redis: r, nginx: n, prefix: prefix, schema: schema}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}

	const name = "renew.outage.test"
	inARow := func(what, want string, allowed ...string) {
		t.Helper()
		row := 0
		e.servedLoop(name, what, func(cn string) bool {
			for _, a := range allowed {
				if cn == a {
					return true
				}
			}
			return cn == want
		}, func(cn string) bool {
			if cn != want {
				row = 0
				return false
			}
			row++
			return row >= 20
		})
	}
	old := newLeaf(t, "before the outage", []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, old)
	// Twenty in a row: both workers serve it, and the last ones from the
	// cache (cache_ttl is an hour).
	inARow("the certificate from every worker", "before the outage")
	if got := fleetSocket(t, client, "http://"+n.HTTPAddr); got != "connected" {
		t.Fatalf("the fleet's own location with Redis up: %q", got)
	}

	offset := n.ErrorLogSize()
	r.Stop()
	stopped := time.Now()
	handshakes, ownRequests := 0, 0
	var missTime time.Duration
	for time.Since(stopped) < 10*time.Second || handshakes < 1000 {
		if got := e.mustHandshake(name); !got.Equal(old.cert) {
			t.Fatalf("with Redis down, %s was served %q, want its cached certificate", name, got.Subject.CommonName)
		}
		miss := "miss-" + strconv.Itoa(handshakes) + ".outage.test"
		began := time.Now()
		if got := e.mustHandshake(miss); !e.isFallback(got) {
			t.Fatalf("with Redis down, %s was served %q, want the fallback", miss, got.Subject.CommonName)
		}
		missTime += time.Since(began)
		handshakes += 2
		if handshakes%40 == 0 {
			for _, base := range []string{"http://" + n.HTTPAddr, "https://" + n.HTTPSAddr} {
				if got := fleetSocket(t, client, base); !strings.Contains(got, "refused") {
					t.Fatalf("the fleet's own location at %s with Redis down: %q, want connection refused", base, got)
				}
				ownRequests++
			}
		}
	}
	down := time.Since(stopped)
	r.Start()
	// It listens before it has loaded its data, and answers LOADING until then.
	waitFor(t, "Redis to load its data", func() bool { return r.Client.Ping(context.Background()).Err() == nil })

	renewed := newLeaf(t, "renewal", []string{name}, time.Now().Add(48*time.Hour))
	e.store(name, renewed)
	// Only the changes stream can replace a certificate cached for an hour.
	inARow("the renewed certificate from every worker after the outage", "renewal", "before the outage")
	elapsed := time.Since(stopped)

	var ownLines, lost, back, perRequest, tries []string
	for _, line := range n.ErrorLogSince(offset) {
		switch {
		case strings.Contains(line, "/fleet-socket"):
			ownLines = append(ownLines, line)
		case strings.Contains(line, "certagent: Redis at") && strings.Contains(line, "cannot be reached"):
			lost = append(lost, line)
		case strings.Contains(line, "certagent: Redis at") && strings.Contains(line, "answers again"):
			back = append(back, line)
		case strings.Contains(line, "certagent:"):
			perRequest = append(perRequest, line)
		default:
			tries = append(tries, line)
		}
	}
	bound := workers * (triesWithin(elapsed) + 1)
	t.Logf("Redis down for %s, back after %s: %d handshakes (cache misses took %s on average); "+
		"log: %d lines of certagent's tries (bound %d), %d outage lines, %d recovery lines, %d of the fleet's own",
		down.Round(time.Millisecond), elapsed.Round(time.Millisecond), handshakes,
		(missTime / time.Duration(handshakes/2)).Round(time.Microsecond), len(tries), bound, len(lost), len(back),
		len(ownLines))
	if len(ownLines) != ownRequests {
		t.Errorf("the fleet's own location failed to connect %d times and the log has %d lines of it:\n%s",
			ownRequests, len(ownLines), strings.Join(ownLines, "\n"))
	}
	if len(lost) < 1 || len(lost) > workers || len(back) < 1 || len(back) > workers {
		t.Errorf("want one line per worker when Redis goes and one when it is back, got %d and %d:\n%s",
			len(lost), len(back), strings.Join(append(lost, back...), "\n"))
	}
	if len(perRequest) > 0 {
		t.Errorf("certagent logged per request while Redis was down:\n%s", strings.Join(perRequest, "\n"))
	}
	if len(tries) > bound || handshakes < 5*bound {
		t.Errorf("%d handshakes gave %d other log lines, want at most %d (%d workers trying Redis on their schedule for %s):\n%s",
			handshakes, len(tries), bound, workers, elapsed, strings.Join(tries, "\n"))
	}
}

// TestHungRedisIsTriedOnceASecond: a Redis that accepts connections but
// does not answer (CLIENT PAUSE) costs a handshake its read_timeout only on
// the worker's tries, at most one a second; the others get the fallback at
// once, and the log gains one line per try and certagent's two.
func TestHungRedisIsTriedOnceASecond(t *testing.T) {
	e := start(t, "")
	e.mustHandshake("warm.hung.test") // a connection in the keepalive pool, reused below
	waitFor(t, "the request for warm.hung.test", func() bool { return len(e.namesIn()) == 1 })
	offset := e.nginx.ErrorLogSize()
	if err := e.redis.Client.Do(context.Background(), "CLIENT", "PAUSE", "5000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	handshakes := 0
	var slow int
	for time.Since(paused) < 4*time.Second || handshakes < 200 {
		began := time.Now()
		if got := e.mustHandshake("hung-" + strconv.Itoa(handshakes) + ".hung.test"); !e.isFallback(got) {
			t.Fatalf("with Redis paused, a new name was served %q, want the fallback", got.Subject.CommonName)
		}
		if time.Since(began) >= 200*time.Millisecond { // read_timeout: reported, not asserted
			slow++
		}
		handshakes++
	}
	waitFor(t, "Redis to be found answering again", func() bool {
		e.mustHandshake("after.hung.test")
		return strings.Contains(e.nginx.ErrorLog()[offset:], "answers again")
	})
	elapsed := time.Since(paused)
	var certagent, tries []string
	for _, line := range e.nginx.ErrorLogSince(offset) {
		if strings.Contains(line, "certagent:") {
			certagent = append(certagent, line)
		} else {
			tries = append(tries, line)
		}
	}
	bound := triesWithin(elapsed) + 1
	t.Logf("Redis paused for 5 s: %d handshakes, %d of them waited for read_timeout; %d lines of tries (bound %d)",
		handshakes, slow, len(tries), bound)
	if len(certagent) != 2 || !strings.Contains(certagent[0], "cannot be reached (timeout)") ||
		!strings.Contains(certagent[1], "answers again") {
		t.Errorf("want certagent's line for the outage and the one for its end, got:\n%s", strings.Join(certagent, "\n"))
	}
	if len(tries) > bound || handshakes < 5*bound {
		t.Errorf("%d handshakes (%d waited for read_timeout) gave %d log lines of tries, want at most %d:\n%s",
			handshakes, slow, len(tries), bound, strings.Join(tries, "\n"))
	}
}

// TestBriefRedisStallIsNoOutage: a Redis that stalls for less than a second
// (CLIENT PAUSE for 400 ms, longer than read_timeout) while the changes poll
// reads from it starts no outage: a timer keeps no visitor waiting and waits
// for the reply, so the worker's handshakes go on asking Redis.
func TestBriefRedisStallIsNoOutage(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"changes_interval": "0.1"}})
	e.waitChangesRead()
	offset := e.nginx.ErrorLogSize()
	// Polled every 100 ms: a poll is in flight during the pause.
	if err := e.redis.Client.Do(context.Background(), "CLIENT", "PAUSE", "400", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	l := newLeaf(t, "stall.outage.test", []string{"stall.outage.test"}, time.Now().Add(24*time.Hour))
	e.store("stall.outage.test", l)
	e.waitChangesRead() // polls after the pause
	if log := strings.Join(e.nginx.ErrorLogSince(offset), "\n"); strings.Contains(log, "timed out") ||
		strings.Contains(log, "cannot be reached") {
		t.Errorf("a stall of 400 ms was taken for an outage:\n%s", log)
	}
	if got := e.mustHandshake("stall.outage.test"); got.SerialNumber.Cmp(l.cert.SerialNumber) != 0 {
		t.Errorf("after the stall stall.outage.test got %q, want its stored certificate", got.Subject.CommonName)
	}
}
