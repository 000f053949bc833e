package nginxtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// fleetConf is an installation that existed before certagent: its own
// init_by_lua_block (a global), init_worker_by_lua_block and shared dict used
// by a location of its own, a static-certificate TLS server and a port-80
// server that redirects everything to HTTPS. The certagent lines are the ones
// the README's "Point an existing OpenResty fleet at certagent" adds: the
// dicts snippet, one call in each of the fleet's init blocks, the challenge
// location before the redirect and the TLS snippet in the catch-all server.
const fleetConf = `load_module {{modules}}/ndk_http_module.so;
load_module {{modules}}/ngx_http_lua_module.so;
{{user}}
daemon off;
worker_processes 2;
pid {{dir}}/nginx.pid;
error_log {{dir}}/logs/error.log warn;
include {{root}}/nginx/certagent-main.conf;

events {
    worker_connections 256;
}

http {
    access_log off;
    client_body_temp_path {{dir}}/tmp/client_body;
    proxy_temp_path {{dir}}/tmp/proxy;
    fastcgi_temp_path {{dir}}/tmp/fastcgi;
    uwsgi_temp_path {{dir}}/tmp/uwsgi;
    scgi_temp_path {{dir}}/tmp/scgi;

    lua_package_path "{{root}}/lua/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_shared_dict fleet_hits 1m;
    include {{root}}/nginx/certagent-http-dicts.conf;

    init_by_lua_block {
        fleet_greeting = "hello from the fleet"
        require("certagent").init({
            redis_url = os.getenv("CERTAGENT_REDIS_URL"),
            key_prefix = os.getenv("CERTAGENT_KEY_PREFIX"),
            node = os.getenv("CERTAGENT_NODE"),
        })
    }

    init_worker_by_lua_block {
        ngx.shared.fleet_hits:add("workers_started_at", ngx.now())
        require("certagent").init_worker()
    }

    server {
        listen 127.0.0.1:{{http}} default_server;
        server_name _;

        include {{root}}/nginx/certagent-acme.conf;

        location = /fleet-counter {
            content_by_lua_block {
                local n = ngx.shared.fleet_hits:incr("hits", 1, 0)
                local started = ngx.shared.fleet_hits:get("workers_started_at") ~= nil
                ngx.say(fleet_greeting, " ", n, " ", tostring(started))
            }
        }

        location / {
            return 301 https://$host$request_uri;
        }
    }

    server {
        listen 127.0.0.1:{{fleettls}} ssl;
        server_name www.fleet.test;
        ssl_certificate {{fleetcert}};
        ssl_certificate_key {{fleetkey}};

        location / {
            return 200 "fleet static\n";
        }
    }

    server {
        listen 127.0.0.1:{{tls}} ssl default_server;
        server_name _;
        ssl_certificate {{fallbackcert}};
        ssl_certificate_key {{fallbackkey}};
        include {{root}}/nginx/certagent-tls.conf;

        location / {
            return 200 "ok\n";
        }
    }
}
`

// startFleet runs fleetConf with a Redis of its own and returns the env the
// other tests use (HTTPSAddr is certagent's TLS server) and the address of
// the fleet's static TLS server.
func startFleet(t *testing.T) (*env, string, *testenv.Nginx) {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	prefix := "di" + strconv.Itoa(os.Getpid()%1000) + ":"
	dir := t.TempDir()
	fallback, fallbackCert, fallbackKey := testenv.SelfSigned(t, dir, "fallback", "certagent fallback", nil, nil)
	_, fleetCert, fleetKey := testenv.SelfSigned(t, dir, "fleet", "fleet static", []string{"www.fleet.test"}, nil)
	httpPort, tlsPort, fleetPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	conf := strings.NewReplacer(
		"{{modules}}", testenv.NginxModulesDir,
		"{{user}}", user,
		"{{dir}}", dir,
		"{{root}}", testenv.RepoRoot(),
		"{{http}}", strconv.Itoa(httpPort),
		"{{tls}}", strconv.Itoa(tlsPort),
		"{{fleettls}}", strconv.Itoa(fleetPort),
		"{{fleetcert}}", fleetCert,
		"{{fleetkey}}", fleetKey,
		"{{fallbackcert}}", fallbackCert,
		"{{fallbackkey}}", fallbackKey,
	).Replace(fleetConf)
	httpAddr := "127.0.0.1:" + strconv.Itoa(httpPort)
	tlsAddr := "127.0.0.1:" + strconv.Itoa(tlsPort)
	fleetAddr := "127.0.0.1:" + strconv.Itoa(fleetPort)
	n := testenv.StartNginxConf(t, dir, conf, map[string]string{
		"CERTAGENT_REDIS_URL":  r.URL,
		"CERTAGENT_KEY_PREFIX": prefix,
		"CERTAGENT_NODE":       testNode,
	}, httpAddr, tlsAddr, fleetAddr)
	n.HTTPAddr, n.HTTPSAddr, n.FallbackCert = httpAddr, tlsAddr, fallback
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	return &env{t: t, redis: r, nginx: n, prefix: prefix, schema: schema}, fleetAddr, n
}

// TestDropIn: the snippets and the two init calls added to an unrelated
// nginx.conf leave its own servers, init blocks and shared dict working, and
// certagent answers challenges, records an unknown name and serves its
// certificate once stored.
func TestDropIn(t *testing.T) {
	e, fleetAddr, n := startFleet(t)
	client := &http.Client{
		Timeout: 10 * time.Second,
		// The redirect is what is under test, not where it leads.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	get := func(host, path string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+n.HTTPAddr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Host %s): %v", path, host, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}

	// The fleet's own things.
	for i := 1; i <= 3; i++ {
		status, _, body := get("www.fleet.test", "/fleet-counter")
		want := fmt.Sprintf("hello from the fleet %d true\n", i)
		if status != 200 || body != want {
			t.Fatalf("the fleet's own location: %d %q, want 200 %q", status, body, want)
		}
	}
	status, header, _ := get("www.fleet.test", "/some/page?x=1")
	if loc := header.Get("Location"); status != 301 || loc != "https://www.fleet.test/some/page?x=1" {
		t.Fatalf("the fleet's redirect: %d Location %q", status, loc)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fleetAddr,
		&tls.Config{ServerName: "www.fleet.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("the fleet's static TLS server: %v", err)
	}
	if cn := conn.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "fleet static" {
		t.Errorf("the fleet's static TLS server presented %q, want its own certificate", cn)
	}
	conn.Close()

	// Challenges are answered before the redirect.
	ctx := context.Background()
	if err := e.redis.Client.Set(ctx, e.key("token", "name", challengeHost, "token", challengeToken),
		keyAuth, 600*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	status, _, body := get(challengeHost, "/.well-known/acme-challenge/"+challengeToken)
	if status != 200 || body != keyAuth {
		t.Fatalf("challenge: %d %q, want 200 %q", status, body, keyAuth)
	}
	status, header, _ = get(challengeHost, "/.well-known/acme-challenge/unknown-token")
	if status != 404 || header.Get("Location") != "" {
		t.Fatalf("unknown challenge token: %d Location %q, want a 404 and no redirect", status, header.Get("Location"))
	}

	// An unknown name gets the fallback and is recorded, then is served.
	const name = "new.dropin.test"
	if got := e.mustHandshake(name); !e.isFallback(got) {
		t.Fatalf("%s: served %q before any record, want the fallback", name, got.Subject.CommonName)
	}
	waitFor(t, "the request for "+name, func() bool {
		names := e.namesIn()
		return len(names) == 1 && names[0] == name
	})
	l := newLeaf(t, "dropin", []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, l)
	waitFor(t, "the stored certificate of "+name, func() bool {
		got, err := e.handshake(name)
		return err == nil && got.Equal(l.cert)
	})
	for _, line := range e.errorLines(0) {
		t.Errorf("error log: %s", line)
	}
}

// TestDictsSnippetMatches: certagent-http.conf repeats the directives of
// certagent-http-dicts.conf (nginx resolves includes against the main
// configuration's directory, so one cannot include the other wherever they
// are installed); they must not drift apart.
func TestDictsSnippetMatches(t *testing.T) {
	directives := func(file string) []string {
		data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "nginx", file))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range regexp.MustCompile(`(?m)^(lua_shared_dict|lua_socket_log_errors) .*$`).FindAllString(string(data), -1) {
			out = append(out, m)
		}
		return out
	}
	dicts, all := directives("certagent-http-dicts.conf"), directives("certagent-http.conf")
	if len(dicts) != 5 || strings.Join(dicts, "\n") != strings.Join(all, "\n") {
		t.Fatalf("certagent-http-dicts.conf has\n%s\ncertagent-http.conf has\n%s",
			strings.Join(dicts, "\n"), strings.Join(all, "\n"))
	}
}
