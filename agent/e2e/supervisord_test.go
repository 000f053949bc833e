package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"net/http"
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
// would, with the variables docs/docker.md documents: the CA, the allow
// rule, and (because this is a test) ports, directories and users moved out
// of the way. The programs are found on PATH and nginx.conf is rendered from
// docker/nginx.conf. A new name is issued; then supervisord stops within
// Docker's 10 s although a client holds an unfinished request, another an
// idle TLS connection, and the agent an order whose validation never
// answers, and Redis saves on the way out.
func TestSupervisordOnAPlainHost(t *testing.T) {
	supervisord := testenv.Require(t, "supervisord")
	nginxStack := testenv.Stack(t)
	redisBin := testenv.Require(t, "redis-server")
	agent := testenv.BuildBinary(t, "./agent/cmd/certagent")
	root := testenv.RepoRoot()
	dir := t.TempDir()
	httpPort, httpsPort, redisPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	pebble, ca := startCA(t, testenv.PebbleOptions{HTTPPort: httpPort})

	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// nginx is the stack under test (Debian's or the OpenResty build):
	// certagent-supervise loads the Lua module or not, as the binary needs.
	path := strings.Join([]string{filepath.Dir(agent), filepath.Dir(nginxStack.Binary), filepath.Dir(redisBin),
		filepath.Dir(supervisord), "/usr/bin", "/bin"}, ":")
	cmd := exec.Command(filepath.Join(root, "docker", "certagent-supervise"))
	cmd.Env = []string{
		"PATH=" + path,
		"CERTAGENT_ACME_DIRECTORY=" + ca.DirectoryURL,
		"CERTAGENT_CA_ROOTS=" + ca.CARootsFile,
		"CERTAGENT_ALLOW=*.example.test",
		"CERTAGENT_EMAIL=ops@example.test",
		"CERTAGENT_DATA_DIR=" + filepath.Join(dir, "data"),
		"CERTAGENT_RUN_DIR=" + filepath.Join(dir, "run"),
		"CERTAGENT_CONF_DIR=" + dir,
		"CERTAGENT_NGINX_HTTP_LISTEN=127.0.0.1:" + strconv.Itoa(httpPort),
		"CERTAGENT_NGINX_HTTPS_LISTEN=127.0.0.1:" + strconv.Itoa(httpsPort),
		"CERTAGENT_BUNDLED_REDIS_PORT=" + strconv.Itoa(redisPort),
		"CERTAGENT_HTTP_LISTEN=127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)),
		// Port 80 on demand, and two fields of the Lua configuration.
		"CERTAGENT_HTTP_ON_DEMAND=true",
		"CERTAGENT_HTTP_MISSING=503",
		"CERTAGENT_FIRST_HANDSHAKE_WAIT=0",
		// The test's files are in directories only their owner may enter.
		"CERTAGENT_AGENT_USER=" + me.Username,
		"CERTAGENT_REDIS_USER=" + me.Username,
		"CERTAGENT_NGINX_USER=" + me.Username,
	}
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
	reaped := make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(reaped)
	}()
	t.Cleanup(func() {
		// supervisord puts each program in a process group of its own:
		// killing its group would leave nginx, Redis and the agent
		// running. Until Wait has reaped supervisord its pid is not reused.
		select {
		case <-reaped:
		default:
			testenv.KillTree(cmd.Process.Pid)
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("supervisord output:\n%s", out)
		}
	})

	// Until nginx completes a handshake: certagent-supervise's nginx -t
	// binds the ports a moment before the master does.
	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("nginx completed no handshake within 30 s: %v", err)
		}
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
	// supervisorctl as docs/docker.md says, with the same variables: the
	// three programs running (nginx counts as started after 3 s).
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		ctl := exec.Command(filepath.Join(root, "docker", "certagent-supervise"), "ctl", "status")
		ctl.Env = cmd.Env
		out, err := ctl.CombinedOutput()
		if err == nil && strings.Count(string(out), "RUNNING") == 3 {
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("certagent-supervise ctl status: %v\n%s", err, out)
		}
	}

	// Port 80 on demand: a plain-HTTP request for a new name gets 503 (no
	// wait: CERTAGENT_FIRST_HANDSHAKE_WAIT=0) and records the name, which is
	// issued without any handshake; then the request goes on to the redirect.
	plain := &http.Client{Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func() *http.Response {
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(httpPort)+"/page", nil)
		req.Host = "ondemand.example.test"
		resp, err := plain.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a plain-HTTP request for a new name got %s (Retry-After %q), want 503 with Retry-After",
			resp.Status, resp.Header.Get("Retry-After"))
	}
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		resp := get()
		if resp.StatusCode == http.StatusPermanentRedirect && resp.Header.Get("Location") == "https://ondemand.example.test/page" {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("a name recorded over plain HTTP still gets %s after 20 s, want 308 once issued", resp.Status)
		}
	}

	// An order in flight: the name resolves to an address where a server
	// accepts Pebble's validation and never answers.
	const pending = "pending.example.test"
	hold, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	go func() {
		for {
			c, err := hold.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	pebble.SetDNS(t, "/add-a", map[string]any{"host": pending + ".", "addresses": []string{"127.0.0.2"}})
	go func() { _, _ = tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: pending, InsecureSkipVerify: true}) }()
	waitIssuingMark(t, redisPort, pending)

	slow, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := slow.Write([]byte("GET / HTTP/1.1\r\nHost: slow.example.test\r\n")); err != nil {
		t.Fatal(err)
	}
	idle, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	// SIGTERM to supervisord stops every process it runs, then itself.
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		t.Logf("supervisord stopped in %s with a slow client, an idle TLS connection and an order in flight",
			time.Since(start).Round(10*time.Millisecond))
		if err != nil {
			t.Errorf("supervisord exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("supervisord still running 30 s after SIGTERM")
	}
	out, _ := os.ReadFile(logPath)
	for _, bad := range []string{"CRIT", "with SIGKILL"} {
		if bytes.Contains(out, []byte(bad)) {
			t.Errorf("supervisord logged %q: %s", bad, lineWith(out, bad))
		}
	}
	if !bytes.Contains(out, []byte("DB saved on disk")) {
		t.Error("Redis did not save before supervisord exited")
	}
	if err := testenv.WaitTCP(httpsAddr, 200*time.Millisecond); err == nil {
		t.Error("nginx still answers after supervisord stopped")
	}
}

// waitIssuingMark waits until an agent has taken name: its issuing mark
// (docs/redis-schema.md) is set.
func waitIssuingMark(t *testing.T, redisPort int, name string) {
	t.Helper()
	redisCLI := testenv.Require(t, "redis-cli")
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := exec.Command(redisCLI, "-p", strconv.Itoa(redisPort), "get", "certagent:issuing:"+name).Output()
		if strings.TrimSpace(string(out)) == "issuing" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no agent took %s within 15 s (issuing mark %q)", name, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lineWith(out []byte, text string) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), text) {
			return sc.Text()
		}
	}
	return ""
}
