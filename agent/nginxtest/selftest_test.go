package nginxtest

import (
	"crypto/tls"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// The self-test's lines (lua/certagent/selftest.lua).
const (
	yieldsLine      = "certagent: ssl_certificate_by_lua can yield in this nginx"
	cannotYieldLine = "certagent: this nginx cannot yield in ssl_certificate_by_lua"
)

// startSelfTested starts stack (nil: the stack under test) with two workers,
// tlsServer in the TLS server and the error log at info, where the self-test
// says that it ran, and returns it after some handshakes, whatever their
// outcome: the first one of a worker starts the self-test.
func startSelfTested(t *testing.T, stack *testenv.NginxStack, tlsServer string) *env {
	t.Helper()
	r := testenv.StartRedis(t)
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:         r.URL,
		Stack:            stack,
		ErrorLogLevel:    "info",
		WorkerProcesses:  2,
		HTTPSServerExtra: tlsServer,
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	e := &env{t: t, redis: r, nginx: n}
	for i := 0; i < 4; i++ {
		_, _ = e.handshake("selftest-trigger.example.test")
	}
	return e
}

// linesWith returns the error log's lines that contain text.
func (e *env) linesWith(text string) []string {
	var out []string
	for _, line := range strings.Split(e.nginx.ErrorLog(), "\n") {
		if strings.Contains(line, text) {
			out = append(out, line)
		}
	}
	return out
}

// TestYieldSelfTest: nginx checks, at the first handshake after its start,
// that ssl_certificate_by_lua can yield. On Debian's nginx and OpenResty's
// it can: one info line, nothing at warn or above. On an nginx built
// without OpenResty's ssl_cert_cb_yield core change it cannot: exactly one
// error, naming the fix, however many handshakes follow.
func TestYieldSelfTest(t *testing.T) {
	// can checks that the self-test finds that the stack under test can
	// yield, with tlsServer in the TLS server, and says so once, at info.
	can := func(t *testing.T, tlsServer string) {
		e := startSelfTested(t, nil, tlsServer)
		waitFor(t, "the self-test's line", func() bool { return len(e.linesWith(yieldsLine)) > 0 })
		if got := e.linesWith(cannotYieldLine); len(got) > 0 {
			t.Fatalf("the self-test says %s cannot yield:\n%s", testenv.Stack(t), strings.Join(got, "\n"))
		}
		if got := e.errorLines(0); len(got) > 0 {
			t.Fatalf("errors logged:\n%s", strings.Join(got, "\n"))
		}
		for _, line := range e.linesWith("yield") {
			if !strings.Contains(line, "[info]") {
				t.Errorf("the self-test logged above info: %s", line)
			}
		}
		if l := e.mustHandshake("after-selftest.example.test"); !e.isFallback(l) {
			t.Fatalf("served %q, want the fallback", l.Subject.CommonName)
		}
		if got := len(e.linesWith(yieldsLine)); got != 1 {
			t.Fatalf("the self-test ran %d times, want once", got)
		}
	}
	t.Run("stack under test", func(t *testing.T) { can(t, "") })
	// The fleet's protocols stand: a ClientHello offering TLS 1.3 and 1.2
	// reaches the handler of a listener that allows only one of them.
	t.Run("TLS 1.2 only", func(t *testing.T) { can(t, "ssl_protocols TLSv1.2;") })
	t.Run("TLS 1.3 only", func(t *testing.T) { can(t, "ssl_protocols TLSv1.3;") })

	t.Run("behind a PROXY protocol listener", func(t *testing.T) {
		n := startProxyProtocol(t)
		waitFor(t, "the self-test's line", func() bool { return strings.Contains(n.ErrorLog(), yieldsLine) })
		for _, line := range strings.Split(n.ErrorLog(), "\n") {
			// The harness's wait for the port connects and sends nothing.
			if strings.Contains(line, `broken header: ""`) {
				continue
			}
			if strings.Contains(line, "[error]") || strings.Contains(line, cannotYieldLine) {
				t.Errorf("error log: %s", line)
			}
		}
	})

	t.Run("without the core change", func(t *testing.T) {
		stack := testenv.NoYieldStack(t)
		e := startSelfTested(t, &stack, "")
		waitFor(t, "the self-test's error", func() bool { return len(e.linesWith(cannotYieldLine)) > 0 })
		// The failure it reports: a handshake that must ask Redis is aborted.
		if _, err := e.handshake("needs-redis.example.test"); err == nil {
			t.Fatal("a handshake that asks Redis succeeded on the nginx without the core change")
		}
		for i := 0; i < 4; i++ {
			_, _ = e.handshake("more.example.test")
		}
		time.Sleep(500 * time.Millisecond)
		// One error in all, the self-test's: the aborted handshakes are
		// logged at info, and the self-test's own handshake adds nothing.
		got := e.errorLines(0)
		if len(got) != 1 || !strings.Contains(got[0], cannotYieldLine) {
			t.Fatalf("%d errors logged, want the self-test's only:\n%s", len(got), strings.Join(got, "\n"))
		}
		for _, want := range []string{"[error]", "ssl_cert_cb_yield", "OpenResty's nginx or Debian's", "docs/lua.md"} {
			if !strings.Contains(got[0], want) {
				t.Errorf("the self-test's error does not say %q: %s", want, got[0])
			}
		}
		if got := e.linesWith(yieldsLine); len(got) > 0 {
			t.Fatalf("the self-test also says it can yield:\n%s", strings.Join(got, "\n"))
		}
	})
}

// startProxyProtocol starts nginx with its TLS listener behind a load
// balancer that sends the PROXY protocol header, and makes a first
// handshake through it as the load balancer would.
func startProxyProtocol(t *testing.T) *testenv.Nginx {
	t.Helper()
	r := testenv.StartRedis(t)
	n := testenv.StartNginx(t, testenv.NginxOptions{RedisURL: r.URL, ErrorLogLevel: "info",
		HTTPSListen: "proxy_protocol"})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	conn, err := net.DialTimeout("tcp", n.HTTPSAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("PROXY TCP4 192.0.2.1 127.0.0.1 40000 443\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := tls.Client(conn, &tls.Config{ServerName: "lb.example.test", InsecureSkipVerify: true}).Handshake(); err != nil {
		t.Fatalf("handshake through the PROXY protocol listener: %v\n%s", err, n.ErrorLog())
	}
	return n
}
