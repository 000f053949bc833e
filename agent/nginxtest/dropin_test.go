package nginxtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	"github.com/redis/go-redis/v9"
)

// fleetConf is an installation that existed before certagent: its own
// init_by_lua_block (a global), init_worker_by_lua_block and shared dict used
// by a location of its own, TLS 1.2 only for every server, a legacy
// static-certificate server and a catch-all that closes every other name
// (return 444) on one listener, a port-80 server that redirects everything
// to HTTPS, and an application server. The lines that end in "# certagent"
// (or "-- certagent" in Lua) and {{catchall}} are what the README's "Point an existing OpenResty fleet
// at certagent" changes: the main and dicts snippets, init() and
// init_worker() in the fleet's own blocks, the challenge location, the TLS
// snippet in the catch-all, whose 444 turns into routing for the names that
// have a certificate.
const fleetConf = `load_module {{modules}}/ndk_http_module.so;
load_module {{modules}}/ngx_http_lua_module.so;
{{user}}
daemon off;
worker_processes 2;
pid {{dir}}/nginx.pid;
error_log {{dir}}/logs/error.log warn;
include {{root}}/nginx/certagent-main.conf; # certagent

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
    ssl_protocols TLSv1.2;

    lua_package_path "{{root}}/lua/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_shared_dict fleet_hits 1m;
    include {{root}}/nginx/certagent-http-dicts.conf; # certagent

    init_by_lua_block {
        fleet_greeting = "hello from the fleet"
        require("certagent").init() -- certagent
    }

    init_worker_by_lua_block {
        ngx.shared.fleet_hits:add("workers_started_at", ngx.now())
        require("certagent").init_worker() -- certagent
    }

    server {
        listen 127.0.0.1:{{http}} default_server;
        server_name _;

        include {{root}}/nginx/certagent-acme.conf; # certagent

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
        listen 127.0.0.1:{{app}};
        location / {
            return 200 "app $host\n";
        }
    }

    server {
        listen 127.0.0.1:{{tls}} ssl;
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
{{catchall}}
    }
}
`

// catchAllBefore is the fleet's catch-all: every name no server claims is
// closed without an answer.
const catchAllBefore = `
        return 444;
`

// catchAllAfter is the README's catch-all with certagent: names that have a
// certificate go to the application, the others are closed as before. The
// server-level return is gone: it would run before any location.
const catchAllAfter = `
        include {{root}}/nginx/certagent-tls.conf;

        location / {
            access_by_lua_block {
                if not require("certagent").has_certificate() then
                    return ngx.exit(444)
                end
            }
            proxy_set_header Host $host;
            proxy_pass http://127.0.0.1:{{app}};
        }
`

// fleet is a running fleetConf.
type fleet struct {
	nginx    *testenv.Nginx
	httpAddr string
	tlsAddr  string // the listener of the legacy server and the catch-all
}

// runFleet starts fleetConf, with certagent (its lines, catchAllAfter and
// env) or as it was before (no certagent line, catchAllBefore).
func runFleet(t *testing.T, withCertagent bool, env map[string]string) *fleet {
	t.Helper()
	dir := t.TempDir()
	_, fallbackCert, fallbackKey := testenv.SelfSigned(t, dir, "fallback", "certagent fallback", nil, nil)
	_, fleetCert, fleetKey := testenv.SelfSigned(t, dir, "fleet", "fleet static", []string{"www.fleet.test"}, nil)
	httpPort, tlsPort, appPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	conf, catchAll := fleetConf, catchAllAfter
	if !withCertagent {
		var kept []string
		for _, line := range strings.Split(conf, "\n") {
			if !strings.HasSuffix(line, "# certagent") && !strings.HasSuffix(line, "-- certagent") {
				kept = append(kept, line)
			}
		}
		conf, catchAll = strings.Join(kept, "\n"), catchAllBefore
	}
	conf = strings.Replace(conf, "{{catchall}}", catchAll, 1)
	conf = strings.NewReplacer(
		"{{modules}}", testenv.NginxModulesDir,
		"{{user}}", user,
		"{{dir}}", dir,
		"{{root}}", testenv.RepoRoot(),
		"{{http}}", strconv.Itoa(httpPort),
		"{{tls}}", strconv.Itoa(tlsPort),
		"{{app}}", strconv.Itoa(appPort),
		"{{fleetcert}}", fleetCert,
		"{{fleetkey}}", fleetKey,
		"{{fallbackcert}}", fallbackCert,
		"{{fallbackkey}}", fallbackKey,
	).Replace(conf)
	f := &fleet{httpAddr: "127.0.0.1:" + strconv.Itoa(httpPort), tlsAddr: "127.0.0.1:" + strconv.Itoa(tlsPort)}
	f.nginx = testenv.StartNginxConf(t, dir, conf, env, f.httpAddr, f.tlsAddr, "127.0.0.1:"+strconv.Itoa(appPort))
	f.nginx.HTTPAddr, f.nginx.HTTPSAddr = f.httpAddr, f.tlsAddr
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", f.nginx.ErrorLog())
		}
	})
	return f
}

// fleetRedisUser and fleetRedisPassword are the Redis credentials the
// fleet's nginx gets from CERTAGENT_REDIS_USERNAME and
// CERTAGENT_REDIS_PASSWORD only: its CERTAGENT_REDIS_URL has none.
const (
	fleetRedisUser     = "fleet-nginx"
	fleetRedisPassword = "fleet s3cret"
)

// startFleet runs fleetConf with certagent and a Redis of its own that
// requires the fleet's credentials, configured by environment variables
// alone, and returns the env the other tests use.
func startFleet(t *testing.T) (*env, *fleet) {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	ctx := context.Background()
	if err := r.Client.Do(ctx, "ACL", "SETUSER", fleetRedisUser, "on", ">"+fleetRedisPassword,
		"~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	// The default user gets a password nginx does not know.
	if err := r.Client.ConfigSet(ctx, "requirepass", "not the fleet's").Err(); err != nil {
		t.Fatal(err)
	}
	unauthenticated := r.Client
	r.Client = redis.NewClient(&redis.Options{Addr: r.Addr, Username: fleetRedisUser, Password: fleetRedisPassword,
		ContextTimeoutEnabled: true})
	unauthenticated.Close()
	prefix := "di" + strconv.Itoa(os.Getpid()%1000) + ":"
	f := runFleet(t, true, map[string]string{
		"CERTAGENT_REDIS_URL":      r.URL,
		"CERTAGENT_REDIS_USERNAME": fleetRedisUser,
		"CERTAGENT_REDIS_PASSWORD": fleetRedisPassword,
		"CERTAGENT_KEY_PREFIX":     prefix,
		"CERTAGENT_NODE":           testNode,
	})
	// The fallback is the catch-all's own certificate: what a handshake
	// without SNI gets.
	e := &env{t: t, redis: r, nginx: f.nginx, prefix: prefix, schema: schema}
	f.nginx.FallbackCert = e.handshakeCert(t, "")
	return e, f
}

// handshakeCert returns the leaf the fleet's TLS listener presents for sni.
func (e *env) handshakeCert(t *testing.T, sni string) *x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.nginx.HTTPSAddr,
		&tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("handshake with SNI %q: %v", sni, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestDropIn: the snippets and the two init calls added to an unrelated
// nginx.conf, configured by CERTAGENT_* variables alone (Redis credentials
// and key prefix included), leave its own servers, init blocks and shared
// dict working, and certagent answers challenges, records an unknown name,
// serves its certificate once stored, and the catch-all routes it.
func TestDropIn(t *testing.T) {
	e, f := startFleet(t)
	client := &http.Client{
		Timeout: 10 * time.Second,
		// The redirect is what is under test, not where it leads.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	get := func(host, path string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+f.httpAddr+path, nil)
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
	if cn := e.handshakeCert(t, "www.fleet.test").Subject.CommonName; cn != "fleet static" {
		t.Errorf("the fleet's static TLS server presented %q, want its own certificate", cn)
	}
	if status, body, err := httpsGet(f.tlsAddr, "www.fleet.test"); err != nil || status != 200 || body != "fleet static\n" {
		t.Errorf("the fleet's static TLS server: %d %q %v", status, body, err)
	}

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

	// An unknown name gets the fallback and is recorded, and the catch-all
	// closes its requests as before; once its certificate is stored it is
	// served, and its requests go to the application.
	const name = "new.dropin.test"
	if got := e.mustHandshake(name); !e.isFallback(got) {
		t.Fatalf("%s: served %q before any record, want the fallback", name, got.Subject.CommonName)
	}
	waitFor(t, "the request for "+name, func() bool {
		entries := e.streamEntries()
		return len(entries) == 1 && entries[0].Values["name"] == name && entries[0].Values["node"] == testNode
	})
	if status, body, err := httpsGet(f.tlsAddr, name); err == nil {
		t.Fatalf("%s without a certificate: the catch-all answered %d %q, want the connection closed", name, status, body)
	}
	l := newLeaf(t, "dropin", []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, l)
	waitFor(t, "the stored certificate of "+name, func() bool {
		got, err := e.handshake(name)
		return err == nil && got.Equal(l.cert)
	})
	if status, body, err := httpsGet(f.tlsAddr, name); err != nil || status != 200 || body != "app "+name+"\n" {
		t.Fatalf("%s with its certificate: %d %q %v, want the application's 200", name, status, body, err)
	}
	// A request without SNI (an address) is still closed.
	if status, body, err := httpsGet(f.tlsAddr, ""); err == nil {
		t.Fatalf("a request without a name: the catch-all answered %d %q, want the connection closed", status, body)
	}
	for _, line := range e.errorLines(0) {
		t.Errorf("error log: %s", line)
	}
	// Routine start messages stay below warn.
	for _, line := range f.nginx.ErrorLogSince(0) {
		if strings.Contains(line, "certagent") && strings.Contains(line, "[warn]") {
			t.Errorf("a warning at a quiet start: %s", line)
		}
	}
}

// httpsGet sends GET / over TLS to addr with name as SNI and Host (the
// address itself for ""), and returns the status and body, or the error of
// a connection closed without an answer.
func httpsGet(addr, name string) (int, string, error) {
	host := name
	if host == "" {
		host = addr
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{ServerName: name, InsecureSkipVerify: true},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		},
	}
	req, err := http.NewRequest("GET", "https://"+host+"/", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// tlsVersions returns, for each SNI, which of TLS 1.2 and 1.3 a client that
// offers only that version can complete a handshake with at addr.
func tlsVersions(t *testing.T, addr string, snis []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, sni := range snis {
		var accepted []string
		for _, v := range []struct {
			name    string
			version uint16
		}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
				ServerName: sni, InsecureSkipVerify: true, MinVersion: v.version, MaxVersion: v.version})
			if err == nil {
				accepted = append(accepted, v.name)
				conn.Close()
			}
		}
		out[sni] = strings.Join(accepted, ", ")
	}
	return out
}

// TestDropInKeepsProtocols: a fleet that allows TLS 1.2 only still does
// after the drop-in, for its legacy server and for the catch-all certagent
// serves on the same listener (a snippet that set ssl_protocols in the
// listener's default server would change them all).
func TestDropInKeepsProtocols(t *testing.T) {
	snis := []string{"www.fleet.test", "new.protocols.test", ""}
	before := runFleet(t, false, nil)
	want := tlsVersions(t, before.tlsAddr, snis)
	before.nginx.Stop()
	for _, sni := range snis {
		if want[sni] != "TLS 1.2" {
			t.Fatalf("the fleet without certagent accepts %q for SNI %q, want TLS 1.2 only", want[sni], sni)
		}
	}
	r := testenv.StartRedis(t)
	after := runFleet(t, true, map[string]string{"CERTAGENT_REDIS_URL": r.URL, "CERTAGENT_NODE": testNode})
	got := tlsVersions(t, after.tlsAddr, snis)
	for _, sni := range snis {
		if got[sni] != want[sni] {
			t.Errorf("SNI %q: the fleet accepted %q before certagent and %q after", sni, want[sni], got[sni])
		}
	}
}

// TestDictsSnippetMatches: certagent-http.conf repeats the directives of
// certagent-http-dicts.conf (nginx resolves includes against the main
// configuration's directory, so one cannot include the other wherever they
// are installed); they must not drift apart. Both declare certagent's
// shared dicts and nothing else: no directive that would change the
// installation's own Lua (lua_socket_log_errors and its like).
func TestDictsSnippetMatches(t *testing.T) {
	directives := func(file string) []string {
		data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "nginx", file))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range regexp.MustCompile(`(?m)^lua_\w+ .*$`).FindAllString(string(data), -1) {
			out = append(out, m)
		}
		return out
	}
	dicts, all := directives("certagent-http-dicts.conf"), directives("certagent-http.conf")
	for _, d := range dicts {
		if !strings.HasPrefix(d, "lua_shared_dict certagent_") {
			t.Errorf("certagent-http-dicts.conf sets %q, which reaches the installation's own Lua", d)
		}
	}
	if len(dicts) != 4 || strings.Join(dicts, "\n") != strings.Join(all, "\n") {
		t.Fatalf("certagent-http-dicts.conf has\n%s\ncertagent-http.conf has\n%s",
			strings.Join(dicts, "\n"), strings.Join(all, "\n"))
	}
}
