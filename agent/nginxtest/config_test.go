package nginxtest

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// TestExampleConfig checks that nginx/nginx.conf, with its install paths moved
// into this checkout and a temporary directory (and adapted to the stack
// under test), passes nginx -t. (nginx -t does not run init_by_lua; the
// other tests start nginx with the snippets.)
func TestExampleConfig(t *testing.T) {
	stack := testenv.Stack(t)
	root := testenv.RepoRoot()
	dir := t.TempDir()
	_, certPath, keyPath := testenv.SelfSigned(t, dir, "fallback", "certagent fallback", nil, nil)
	data, err := os.ReadFile(filepath.Join(root, "nginx", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer(
		"/etc/certagent/nginx/", filepath.Join(root, "nginx")+"/",
		"/etc/certagent/fallback.pem", certPath,
		"/etc/certagent/fallback.key", keyPath,
		"/usr/share/certagent/lua/", filepath.Join(root, "lua")+"/",
		"/var/log/nginx/", dir+"/",
		"/run/nginx.pid", filepath.Join(dir, "nginx.pid"),
	).Replace(string(data))
	for _, path := range []string{"/etc/certagent", "/usr/share/certagent"} {
		if strings.Contains(conf, path) {
			t.Fatalf("nginx.conf refers to %s in a way this test does not rewrite", path)
		}
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(stack.Adapt(conf)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(stack.Binary, "-t", "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log")).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t on the example configuration: %v\n%s", err, out)
	}
}

// TestInvalidConfigurationRefusesToStart: init() raises on a bad
// configuration, so nginx does not start with it (it fails before opening its
// ports); a bad environment variable is named in the error.
func TestInvalidConfigurationRefusesToStart(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNginx(t, testenv.NginxOptions{RedisURL: r.URL})
	bin := testenv.Stack(t).Binary
	for _, c := range []struct{ variable, value, want string }{
		{"CERTAGENT_REDIS_URL", "http://127.0.0.1:6379", "CERTAGENT_REDIS_URL: redis_url http://127.0.0.1:6379: must start with redis:// or unix:"},
		{"CERTAGENT_REDIS_URL", "redis://h:70000", "bad port"},
		{"CERTAGENT_LRU_SIZE", "many", `CERTAGENT_LRU_SIZE: lru_size must be a number, got "many"`},
	} {
		cmd := exec.Command(bin, "-p", filepath.Dir(n.ConfPath), "-c", n.ConfPath,
			"-e", filepath.Join(t.TempDir(), "error.log"))
		cmd.Env = append(os.Environ(), "CERTAGENT_REDIS_URL="+r.URL, c.variable+"="+c.value)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("nginx started with %s=%s", c.variable, c.value)
		}
		if !strings.Contains(string(out), "certagent: invalid configuration") || !strings.Contains(string(out), c.want) {
			t.Errorf("%s=%s: nginx said %s; want an error mentioning %q", c.variable, c.value, out, c.want)
		}
	}
}

// envConfigLocation exposes certagent.config.new to the test: the query's
// arguments are the environment, except _table, a Lua table constructor
// given to new as the table. It prints "err <message>" or the fields.
const envConfigLocation = `
        location = /_test/config {
            content_by_lua_block {
                local config = require("certagent.config")
                local args = ngx.req.get_uri_args()
                local user
                if args._table then
                    user = assert(loadstring("return " .. args._table))()
                end
                local c, err = config.new(user, function(name) return args[name] end)
                if not c then
                    ngx.print("err ", err)
                    return
                end
                for _, f in ipairs(config.fields()) do
                    ngx.say(f, "=", tostring(c[f]))
                end
                ngx.say("redis=", c.redis.host, ":", c.redis.port, "/", c.redis.db, " ",
                        tostring(c.redis.username), " ", tostring(c.redis.password))
            }
        }
        location = /_test/fields {
            content_by_lua_block {
                local config = require("certagent.config")
                for _, f in ipairs(config.fields()) do
                    ngx.say(f, " ", config.env_name(f))
                end
            }
        }
        location = /_test/active {
            content_by_lua_block {
                local c = require("certagent").config()
                ngx.print(ngx.worker.pid(), " ", c and c.lru_size, " ", c and c.cache_ttl, " ", c and c.key_prefix)
            }
        }
`

// getText GETs path of e's port-80 server with the query q.
func (e *env) getText(path string, q url.Values) string {
	e.t.Helper()
	resp, err := http.Get("http://" + e.nginx.HTTPAddr + path + "?" + q.Encode())
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		e.t.Fatalf("GET %s: %d %v %s", path, resp.StatusCode, err, body)
	}
	return string(body)
}

// TestConfigFromEnvironment: every field is read from its CERTAGENT_*
// variable, typed like the table's; an empty variable keeps the default, a
// table field wins over its variable, and a bad value is an error naming
// the variable.
func TestConfigFromEnvironment(t *testing.T) {
	e := start(t, envConfigLocation)
	configWith := func(env map[string]string) string {
		q := url.Values{}
		for k, v := range env {
			q.Set(k, v)
		}
		return e.getText("/_test/config", q)
	}
	fieldsOf := func(text string) map[string]string {
		out := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
			k, v, _ := strings.Cut(line, "=")
			out[k] = v
		}
		return out
	}

	defaults := fieldsOf(configWith(nil))
	for field, want := range map[string]string{"lru_size": "2000", "name_index": "true", "http_missing": "pass",
		"key_prefix": "certagent:", "redis": "127.0.0.1:6379/0 nil nil"} {
		if defaults[field] != want {
			t.Errorf("no variables: %s = %q, want the default %q", field, defaults[field], want)
		}
	}

	got := fieldsOf(configWith(map[string]string{
		"CERTAGENT_REDIS_URL":                   "redis://redis.internal:7000/2",
		"CERTAGENT_REDIS_USERNAME":              "nginx",
		"CERTAGENT_REDIS_PASSWORD":              "pw with spaces",
		"CERTAGENT_KEY_PREFIX":                  "fleet:",
		"CERTAGENT_NODE":                        "edge-1",
		"CERTAGENT_LRU_SIZE":                    "5000",
		"CERTAGENT_FIRST_HANDSHAKE_GRACE":       "0.5",
		"CERTAGENT_FIRST_HANDSHAKE_WAIT":        "0",
		"CERTAGENT_NAME_INDEX":                  "off",
		"CERTAGENT_HTTP_REDIRECT":               "TRUE",
		"CERTAGENT_HTTP_MISSING":                "503",
		"CERTAGENT_CERTS_DICT":                  "fleet_certs",
		"CERTAGENT_CACHE_TTL":                   "",
		"CERTAGENT_FIRST_HANDSHAKE_MAX_WAITING": "8",
	}))
	for field, want := range map[string]string{
		"redis":                       "redis.internal:7000/2 nginx pw with spaces",
		"key_prefix":                  "fleet:",
		"node":                        "edge-1",
		"lru_size":                    "5000",
		"first_handshake_grace":       "0.5",
		"first_handshake_wait":        "0",
		"name_index":                  "false",
		"http_redirect":               "true",
		"http_missing":                "503",
		"certs_dict":                  "fleet_certs",
		"cache_ttl":                   defaults["cache_ttl"],
		"first_handshake_max_waiting": "8",
	} {
		if got[field] != want {
			t.Errorf("%s = %q, want %q from its variable", field, got[field], want)
		}
	}

	got = fieldsOf(configWith(map[string]string{"_table": "{ lru_size = 7 }", "CERTAGENT_LRU_SIZE": "9",
		"CERTAGENT_CACHE_TTL": "99"}))
	if got["lru_size"] != "7" || got["cache_ttl"] != "99" {
		t.Errorf("table lru_size = 7, CERTAGENT_LRU_SIZE=9, CERTAGENT_CACHE_TTL=99: lru_size %s cache_ttl %s, want 7 and 99",
			got["lru_size"], got["cache_ttl"])
	}

	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"CERTAGENT_LRU_SIZE": "abc"}, `err CERTAGENT_LRU_SIZE: lru_size must be a number, got "abc"`},
		{map[string]string{"CERTAGENT_LRU_SIZE": "2.5"}, "err CERTAGENT_LRU_SIZE: lru_size must be a whole number"},
		{map[string]string{"CERTAGENT_CONNECT_TIMEOUT": "-1"}, "err CERTAGENT_CONNECT_TIMEOUT: connect_timeout must be a positive number, got -1"},
		{map[string]string{"CERTAGENT_CONNECT_TIMEOUT": "nan"}, `err CERTAGENT_CONNECT_TIMEOUT: connect_timeout must be a number, got "nan"`},
		{map[string]string{"CERTAGENT_READ_TIMEOUT": "inf"}, `err CERTAGENT_READ_TIMEOUT: read_timeout must be a number, got "inf"`},
		{map[string]string{"CERTAGENT_NAME_INDEX": "maybe"}, `err CERTAGENT_NAME_INDEX: name_index must be true or false, got "maybe"`},
		{map[string]string{"CERTAGENT_HTTP_MISSING": "404"}, `err CERTAGENT_HTTP_MISSING: http_missing must be "pass" or "503"`},
		{map[string]string{"CERTAGENT_FIRST_HANDSHAKE_WAIT": "90"}, "err CERTAGENT_FIRST_HANDSHAKE_WAIT: first_handshake_wait must be a number of seconds from 0 (off) to 60, got 90"},
		{map[string]string{"CERTAGENT_RELOAD_WARM": "9"}, "err CERTAGENT_RELOAD_WARM: reload_warm must be a number of seconds from 0 (off) to 5, got 9"},
		{map[string]string{"CERTAGENT_REDIS_URL": "rediss://h"}, "err CERTAGENT_REDIS_URL: redis_url rediss://h: must start with redis:// or unix: (rediss:// is not supported)"},
		{map[string]string{"CERTAGENT_STATS_DICT": "certagent_certs"}, "err CERTAGENT_STATS_DICT: stats_dict must differ from certs_dict, requests_dict and names_dict"},
		{map[string]string{"_table": "{ lru_size = 2.5 }", "CERTAGENT_LRU_SIZE": "5"}, "err lru_size must be a whole number"},
		{map[string]string{"_table": "{ lru_sise = 5 }"}, "err unknown configuration field lru_sise"},
	} {
		if got := configWith(c.env); got != c.want {
			t.Errorf("%v: %q, want %q", c.env, got, c.want)
		}
	}
}

// TestEveryFieldHasItsVariable: nginx/certagent-main.conf passes the
// variable of every field init accepts, and docs/lua.md describes each.
func TestEveryFieldHasItsVariable(t *testing.T) {
	e := start(t, envConfigLocation)
	var fields, vars []string
	for _, line := range strings.Split(strings.TrimSpace(e.getText("/_test/fields", nil)), "\n") {
		field, variable, _ := strings.Cut(line, " ")
		fields, vars = append(fields, field), append(vars, variable)
	}
	if len(fields) < 30 {
		t.Fatalf("certagent.config lists %d fields: %v", len(fields), fields)
	}
	read := func(path string) string {
		data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), path))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	var passed []string
	for _, m := range regexp.MustCompile(`(?m)^env (\w+);`).FindAllStringSubmatch(read("nginx/certagent-main.conf"), -1) {
		passed = append(passed, m[1])
	}
	sort.Strings(passed)
	sort.Strings(vars)
	if strings.Join(passed, " ") != strings.Join(vars, " ") {
		t.Errorf("nginx/certagent-main.conf passes\n%v\nthe fields' variables are\n%v", passed, vars)
	}
	doc := read("docs/lua.md")
	i := strings.Index(doc, "## The configuration table")
	if i < 0 {
		t.Fatal("docs/lua.md has no section \"The configuration table\"")
	}
	table := doc[i:]
	if j := strings.Index(table[1:], "\n## "); j >= 0 {
		table = table[:j+1]
	}
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(\\w+)` \\|").FindAllStringSubmatch(table, -1) {
		documented = append(documented, m[1])
	}
	sort.Strings(documented)
	if strings.Join(documented, " ") != strings.Join(fields, " ") {
		t.Errorf("docs/lua.md describes\n%v\ncertagent.config accepts\n%v", documented, fields)
	}
}

// TestInitReadsEnvironment: the shipped certagent-http.conf's init() takes
// its configuration from the variables, a table given to it wins over them,
// and a reload (HUP, nginx -s reload) keeps them without certagent-main.conf,
// because init_by_lua runs in the master, whose environment nginx never
// trims. A binary upgrade (USR2) starts the new master with the env-named
// variables only: certagent-main.conf is what keeps them.
func TestInitReadsEnvironment(t *testing.T) {
	bin := testenv.Stack(t).Binary
	startIt := func() *env {
		r := testenv.StartRedis(t)
		n := testenv.StartNginx(t, testenv.NginxOptions{
			RedisURL: r.URL, KeyPrefix: "envtest:", HTTPServerExtra: envConfigLocation,
			Env:       map[string]string{"CERTAGENT_LRU_SIZE": "1234", "CERTAGENT_CACHE_TTL": "5"},
			LuaConfig: map[string]string{"cache_ttl": "99"},
		})
		return &env{t: t, redis: r, nginx: n}
	}
	// active waits until a worker other than those of pids answers, and
	// returns its pid and what its configuration says.
	active := func(e *env, pids ...string) (string, string) {
		var pid, cfg string
		waitFor(t, "a new worker", func() bool {
			pid, cfg, _ = strings.Cut(e.getText("/_test/active", nil), " ")
			for _, p := range pids {
				if pid == p {
					return false
				}
			}
			return true
		})
		return pid, cfg
	}
	const fromEnv = "1234 99 envtest:"
	withoutMain := func(e *env) {
		conf, err := os.ReadFile(e.nginx.ConfPath)
		if err != nil {
			t.Fatal(err)
		}
		main := regexp.MustCompile(`(?m)^include \S+/certagent-main\.conf;$`)
		if !main.Match(conf) {
			t.Fatalf("the configuration does not include certagent-main.conf:\n%s", conf)
		}
		if err := os.WriteFile(e.nginx.ConfPath, main.ReplaceAll(conf, nil), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	masterPID := func(e *env, file string) int {
		data, err := os.ReadFile(filepath.Join(filepath.Dir(e.nginx.ConfPath), file))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	// upgrade does what Debian's "service nginx upgrade" does: USR2, then
	// QUIT to the old master once the new one runs.
	upgrade := func(e *env) {
		old := masterPID(e, "nginx.pid")
		if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the new master", func() bool {
			_, err := os.Stat(filepath.Join(filepath.Dir(e.nginx.ConfPath), "nginx.pid.oldbin"))
			return err == nil
		})
		if err := syscall.Kill(old, syscall.SIGQUIT); err != nil {
			t.Fatal(err)
		}
	}
	// daemonize runs e's configuration again as a daemon, with the same
	// environment: a master whose parent is still there (daemon off) takes
	// itself for the new binary of an upgrade and ignores USR2.
	daemonize := func(e *env) {
		e.nginx.Stop()
		conf, err := os.ReadFile(e.nginx.ConfPath)
		if err != nil {
			t.Fatal(err)
		}
		conf = []byte(strings.Replace(string(conf), "daemon off;", "daemon on;", 1))
		if err := os.WriteFile(e.nginx.ConfPath, conf, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-p", filepath.Dir(e.nginx.ConfPath), "-c", e.nginx.ConfPath, "-e", e.nginx.ErrorLogPath)
		cmd.Env = append(os.Environ(), "CERTAGENT_REDIS_URL="+e.redis.URL, "CERTAGENT_KEY_PREFIX=envtest:",
			"CERTAGENT_LRU_SIZE=1234", "CERTAGENT_CACHE_TTL=5")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nginx as a daemon: %v\n%s", err, out)
		}
		t.Cleanup(func() {
			for _, file := range []string{"nginx.pid", "nginx.pid.oldbin"} {
				if data, err := os.ReadFile(filepath.Join(filepath.Dir(e.nginx.ConfPath), file)); err == nil {
					if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
						_ = syscall.Kill(pid, syscall.SIGTERM)
					}
				}
			}
		})
		if err := testenv.WaitTCP(e.nginx.HTTPAddr, 15*time.Second); err != nil {
			t.Fatalf("nginx as a daemon: %v\n%s", err, e.nginx.ErrorLog())
		}
	}

	e := startIt()
	pid, cfg := active(e)
	if cfg != fromEnv {
		t.Fatalf("at start: lru_size, cache_ttl, key_prefix = %s, want %s", cfg, fromEnv)
	}
	withoutMain(e)
	if err := syscall.Kill(masterPID(e, "nginx.pid"), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	pid2, cfg := active(e, pid)
	if cfg != fromEnv {
		t.Errorf("after HUP without certagent-main.conf: %s, want %s", cfg, fromEnv)
	}
	reload := exec.Command(bin, "-p", filepath.Dir(e.nginx.ConfPath), "-c", e.nginx.ConfPath,
		"-e", e.nginx.ErrorLogPath, "-s", "reload")
	reload.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if out, err := reload.CombinedOutput(); err != nil {
		t.Fatalf("nginx -s reload: %v\n%s", err, out)
	}
	if _, cfg := active(e, pid, pid2); cfg != fromEnv {
		t.Errorf("after nginx -s reload without certagent-main.conf: %s, want %s", cfg, fromEnv)
	}

	daemonize(e)
	pid, cfg = active(e)
	if cfg != fromEnv {
		t.Fatalf("the daemon without certagent-main.conf: %s, want %s", cfg, fromEnv)
	}
	upgrade(e)
	if _, cfg := active(e, pid); cfg != "2000 99 certagent:" {
		t.Errorf("after a binary upgrade without certagent-main.conf: %s, want the defaults (2000 99 certagent:)", cfg)
	}

	e = startIt()
	daemonize(e)
	pid, _ = active(e)
	upgrade(e)
	if _, cfg := active(e, pid); cfg != fromEnv {
		t.Errorf("after a binary upgrade with certagent-main.conf: %s, want %s", cfg, fromEnv)
	}
}
