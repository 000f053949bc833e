package nginxtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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

// TestInvalidConfigurationRefusesToStart: init() raises on a bad table, so nginx
// does not start with it (it fails before opening its ports).
func TestInvalidConfigurationRefusesToStart(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartNginx(t, testenv.NginxOptions{RedisURL: r.URL})
	bin := testenv.Stack(t).Binary
	for url, want := range map[string]string{
		"http://127.0.0.1:6379": "must start with redis:// or unix:",
		"redis://h:70000":       "bad port",
	} {
		cmd := exec.Command(bin, "-p", filepath.Dir(n.ConfPath), "-c", n.ConfPath,
			"-e", filepath.Join(t.TempDir(), "error.log"))
		cmd.Env = append(os.Environ(), "CERTAGENT_REDIS_URL="+url)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("nginx started with CERTAGENT_REDIS_URL=%s", url)
		}
		if !strings.Contains(string(out), "certagent: invalid configuration") || !strings.Contains(string(out), want) {
			t.Errorf("CERTAGENT_REDIS_URL=%s: nginx said %s; want an error mentioning %q", url, out, want)
		}
	}
}
