package e2e

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// TestSupervisordOnAPlainHost runs the root supervisord.conf through
// docker/certagent-supervise on this host, as an operator without Docker
// would: the bundled Redis, nginx with the image's nginx.conf and the agent,
// with every path moved by environment variables. A new name gets the
// generated fallback certificate, then its own.
func TestSupervisordOnAPlainHost(t *testing.T) {
	supervisord := testenv.Require(t, "supervisord")
	nginxStack := testenv.Stack(t)
	redisBin := testenv.Require(t, "redis-server")
	agent := testenv.BuildBinary(t, "./agent/cmd/certagent")
	root := testenv.RepoRoot()
	dir := t.TempDir()
	data, run := filepath.Join(dir, "data"), filepath.Join(dir, "run")
	httpPort, httpsPort, redisPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	pebble, ca := startCA(t, testenv.PebbleOptions{HTTPPort: httpPort})

	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// The image's nginx.conf, moved onto free loopback ports and this checkout.
	conf, err := os.ReadFile(filepath.Join(root, "docker", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	workerUser := "user " + me.Username + ";"
	if me.Uid != "0" {
		workerUser = ""
	}
	nginxConf := nginxStack.Adapt(strings.NewReplacer(
		"user www-data;", workerUser,
		"listen 80 default_server;", "listen 127.0.0.1:"+strconv.Itoa(httpPort)+" default_server;",
		"listen 443 ssl default_server;", "listen 127.0.0.1:"+strconv.Itoa(httpsPort)+" ssl default_server;",
		"listen [::]:80 default_server;", "",
		"listen [::]:443 ssl default_server;", "",
		"/run/certagent/", run+"/",
		"/var/lib/certagent/", data+"/",
		"/etc/certagent/nginx/", filepath.Join(root, "nginx")+"/",
		"/etc/certagent/conf.d/", filepath.Join(dir, "conf.d")+"/",
		"/usr/share/certagent/lua/", filepath.Join(root, "lua")+"/",
	).Replace(string(conf)))
	if strings.Contains(nginxConf, "/etc/certagent") || strings.Contains(nginxConf, "/var/lib/certagent") {
		t.Fatal("docker/nginx.conf refers to a path this test does not move")
	}
	if err := os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	nginxConfPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(nginxConfPath, []byte(nginxConf), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(filepath.Join(root, "docker", "certagent-supervise"))
	cmd.Env = append(os.Environ(),
		"CERTAGENT_SUPERVISORD_CONF="+filepath.Join(root, "supervisord.conf"),
		"CERTAGENT_DATA_DIR="+data,
		"CERTAGENT_RUN_DIR="+run,
		"CERTAGENT_NGINX_CONF="+nginxConfPath,
		"CERTAGENT_NGINX="+nginxStack.Binary+" -p "+dir,
		"CERTAGENT_AGENT="+agent,
		"CERTAGENT_AGENT_USER="+me.Username,
		"CERTAGENT_REDIS_SERVER="+redisBin,
		"CERTAGENT_REDIS_USER="+me.Username,
		"CERTAGENT_BUNDLED_REDIS_PORT="+strconv.Itoa(redisPort),
		"CERTAGENT_ACME_DIRECTORY="+ca.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+ca.CARootsFile,
		"CERTAGENT_ALLOW=*.example.test",
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin:"+filepath.Dir(supervisord),
	)
	logPath := filepath.Join(dir, "supervisord.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("supervisord output:\n%s", out)
		}
	})

	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	if err := testenv.WaitTCP(httpsAddr, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	s := &stack{pebble: pebble, ca: ca, nginx: &testenv.Nginx{HTTPSAddr: httpsAddr}}
	const name = "supervised.example.test"
	// The shipped configuration holds the first handshake while the name
	// is issued, unless the agent, just started, has not marked it within
	// the grace: either the issued certificate or the generated fallback.
	var chain = s.handshake(t, name)
	if s.verifies(t, chain, name) != nil && chain[0].Subject.CommonName != "certagent fallback" {
		t.Fatalf("first handshake served %q, want the issued certificate or the fallback generated at start", chain[0].Subject)
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.verifies(t, chain, name) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s not issued within 20 s under supervisord", name)
		}
		time.Sleep(100 * time.Millisecond)
		chain = s.handshake(t, name)
	}

	// SIGTERM to supervisord stops every process it runs, then itself.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("supervisord exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("supervisord still running 30 s after SIGTERM")
	}
	if err := testenv.WaitTCP(httpsAddr, 200*time.Millisecond); err == nil {
		t.Error("nginx still answers after supervisord stopped")
	}
}
