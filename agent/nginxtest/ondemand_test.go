package nginxtest

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// operatorLocation stands for the installation's own port-80 handling.
const operatorLocation = `
        location /site/ {
            content_by_lua_block { ngx.say("operator") }
        }
`

// startOnDemand starts nginx with certagent-ondemand.conf in the port-80
// server and the given configuration values.
func startOnDemand(t *testing.T, luaConfig map[string]string) *env {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	prefix := "od" + strconv.Itoa(os.Getpid()%1000) + ":"
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:  r.URL,
		KeyPrefix: prefix,
		Env:       map[string]string{"CERTAGENT_NODE": testNode},
		LuaConfig: luaConfig,
		HTTPServerExtra: "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-ondemand.conf") + ";\n" +
			operatorLocation,
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	return &env{t: t, redis: r, nginx: n, prefix: prefix, schema: schema}
}

// noRedirect sends a GET to the port-80 server without following redirects.
func (e *env) noRedirect(host, path string) (int, http.Header, string) {
	e.t.Helper()
	req, err := http.NewRequest("GET", "http://"+e.nginx.HTTPAddr+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Host = host
	client := &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("GET %s (Host %s): %v", path, host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// TestOnDemandPass: by default a plain-HTTP request for a name without a
// certificate records the name once per window and gets the server's own
// answer, before and after the certificate exists.
func TestOnDemandPass(t *testing.T) {
	e := startOnDemand(t, nil)
	const name = "pass.ondemand.test"
	for i := 0; i < 3; i++ {
		if status, _, body := e.noRedirect(name, "/site/page"); status != 200 || body != "operator\n" {
			t.Fatalf("request %d: %d %q, want the operator's 200", i, status, body)
		}
	}
	waitFor(t, "the request for "+name, func() bool { return len(e.namesIn()) >= 1 })
	e.settle()
	if names := e.namesIn(); len(names) != 1 || names[0] != name {
		t.Fatalf("stream names %v, want %s once", names, name)
	}
	// A handshake within the window is de-duplicated with the HTTP request.
	if c := e.mustHandshake(name); !e.isFallback(c) {
		t.Fatalf("handshake: served %q, want the fallback", c.Subject.CommonName)
	}
	e.settle()
	if names := e.namesIn(); len(names) != 1 {
		t.Fatalf("after a handshake in the same window, stream names %v, want %s once", names, name)
	}
	l := newLeaf(t, "pass", []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, l)
	waitFor(t, "the certificate to be served", func() bool {
		c, err := e.handshake(name)
		return err == nil && c.Equal(l.cert)
	})
	if status, _, body := e.noRedirect(name, "/site/page"); status != 200 || body != "operator\n" {
		t.Fatalf("with a certificate and http_redirect off: %d %q, want the operator's 200", status, body)
	}
}

// TestOnDemand503AndRedirect: with http_missing = "503" the client gets 503
// and Retry-After while the name has no certificate, with http_redirect a 308
// to HTTPS once it has one; challenge requests get neither.
func TestOnDemand503AndRedirect(t *testing.T) {
	e := startOnDemand(t, map[string]string{"http_missing": `"503"`, "http_retry_after": "17",
		"http_redirect": "true"})
	const name = "ch.example.test" // challengeHost: its token is answered below
	if err := e.redis.Client.Set(context.Background(),
		e.key("token", "name", challengeHost, "token", challengeToken), keyAuth, 600*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	challenge := "/.well-known/acme-challenge/" + challengeToken

	status, header, _ := e.noRedirect(name, "/site/page?x=1")
	if status != 503 || header.Get("Retry-After") != "17" {
		t.Fatalf("without a certificate: %d Retry-After %q, want 503 and 17", status, header.Get("Retry-After"))
	}
	if status, _, body := e.noRedirect(name, challenge); status != 200 || body != keyAuth {
		t.Fatalf("challenge without a certificate: %d %q, want 200 and the key authorization", status, body)
	}
	waitFor(t, "the request for "+name, func() bool {
		names := e.namesIn()
		return len(names) == 1 && names[0] == name
	})

	l := newLeaf(t, "redirect", []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, l)
	waitFor(t, "the redirect once the certificate is stored", func() bool {
		status, _, _ := e.noRedirect(name, "/site/page?x=1")
		return status == 308
	})
	status, header, _ = e.noRedirect("CH.Example.Test.:80", "/site/page?x=1")
	if loc := header.Get("Location"); status != 308 || loc != "https://"+name+"/site/page?x=1" {
		t.Fatalf("with a certificate: %d Location %q, want 308 to https://%s/site/page?x=1", status, loc, name)
	}
	if status, header, body := e.noRedirect(name, challenge); status != 200 || body != keyAuth || header.Get("Location") != "" {
		t.Fatalf("challenge with a certificate: %d %q Location %q, want 200 and no redirect", status, body, header.Get("Location"))
	}
	if status, _, _ := e.noRedirect("other.ondemand.test", challenge); status != 404 {
		t.Fatalf("challenge for another name: %d, want the challenge handler's 404", status)
	}
	for _, line := range e.errorLines(0) {
		t.Errorf("error log: %s", line)
	}
}
