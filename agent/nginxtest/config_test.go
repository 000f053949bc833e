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
// into this checkout and a temporary directory, passes nginx -t. (nginx -t
// does not run init_by_lua; the other tests start nginx with the snippets.)
func TestExampleConfig(t *testing.T) {
	bin := testenv.Require(t, "nginx", "/usr/sbin")
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
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-t", "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log")).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t on the example configuration: %v\n%s", err, out)
	}
}
