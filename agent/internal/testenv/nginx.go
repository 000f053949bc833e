package testenv

import (
	"crypto/x509"
	"fmt"
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
)

// NginxOptions configures StartNginx.
type NginxOptions struct {
	// RedisURL is passed as CERTAGENT_REDIS_URL (required).
	RedisURL string
	// KeyPrefix is passed as CERTAGENT_KEY_PREFIX; empty leaves the default.
	KeyPrefix string
	// HTTPPort is the port of the plain HTTP server; 0 picks a free one.
	HTTPPort int
	// Env adds variables to nginx's environment (e.g. CERTAGENT_NODE).
	Env map[string]string
	// HTTPServerExtra is inserted into the plain HTTP server block (tests add
	// locations that call certagent modules directly).
	HTTPServerExtra string
	// HTTPSServerExtra is inserted into the TLS server block, the one that
	// includes certagent-tls.conf.
	HTTPSServerExtra string
	// LuaConfig gives the init() call of the shipped
	// nginx/certagent-http.conf a configuration table (field name to Lua
	// expression), e.g. {"lru_size": "3"}; its fields win over the
	// CERTAGENT_* variables. An unknown field makes nginx refuse to start.
	LuaConfig map[string]string
	// SharedDicts replaces the sizes of the snippet's lua_shared_dict lines
	// (dict name to size, e.g. {"certagent_certs": "64k"}).
	SharedDicts map[string]string
	// LuaPathPrefix is put in front of lua_package_path (a directory holding
	// ?.lua modules), e.g. to offer resty.redis next to Debian's nginx.redis.
	LuaPathPrefix string
	// WorkerProcesses defaults to 1.
	WorkerProcesses int
	// WorkerConnections defaults to 256. Every client connection, Redis
	// connection and running timer of a worker takes one.
	WorkerConnections int
	// Stack is the nginx to run; nil: the stack under test (Stack).
	Stack *NginxStack
	// ErrorLogLevel is the error_log level; empty: warn.
	ErrorLogLevel string
	// HTTPSListen adds parameters to the TLS server's listen directive
	// (e.g. proxy_protocol).
	HTTPSListen string
}

// httpSnippet returns the path of the http-context snippet: the shipped one,
// or a copy in dir with the values of opts.LuaConfig and opts.SharedDicts.
func httpSnippet(t testing.TB, dir string, opts NginxOptions) string {
	t.Helper()
	shipped := filepath.Join(RepoRoot(), "nginx", "certagent-http.conf")
	if len(opts.LuaConfig) == 0 && len(opts.SharedDicts) == 0 {
		return shipped
	}
	data, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(data)
	if len(opts.LuaConfig) > 0 {
		const call = `require("certagent").init()`
		if strings.Count(conf, call) != 1 {
			t.Fatalf("nginx/certagent-http.conf does not call %s once", call)
		}
		fields := make([]string, 0, len(opts.LuaConfig))
		for field, value := range opts.LuaConfig {
			fields = append(fields, field+" = "+value)
		}
		sort.Strings(fields)
		conf = strings.Replace(conf, call, `require("certagent").init({ `+strings.Join(fields, ", ")+` })`, 1)
	}
	for dict, size := range opts.SharedDicts {
		re := regexp.MustCompile(`(?m)^lua_shared_dict ` + regexp.QuoteMeta(dict) + ` \S+;$`)
		if !re.MatchString(conf) {
			t.Fatalf("nginx/certagent-http.conf does not declare lua_shared_dict %s", dict)
		}
		conf = re.ReplaceAllLiteralString(conf, "lua_shared_dict "+dict+" "+size+";")
	}
	path := filepath.Join(dir, "certagent-http.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Nginx is an nginx started for one test with the repository's own snippets
// (nginx/certagent-*.conf) and Lua modules (lua/).
type Nginx struct {
	HTTPAddr     string            // 127.0.0.1:port of the port-80 server
	HTTPSAddr    string            // 127.0.0.1:port of the TLS server
	FallbackCert *x509.Certificate // the TLS server's own certificate
	ErrorLogPath string
	ConfPath     string

	t    testing.TB
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartNginx writes a configuration into a temporary directory, starts nginx
// (one worker unless told otherwise, daemon off) and waits until both ports accept connections. It is
// stopped when the test ends. Long because the configuration it writes is
// one template, read best in one piece.
func StartNginx(t testing.TB, opts NginxOptions) *Nginx {
	t.Helper()
	stack := opts.Stack
	if stack == nil {
		s := Stack(t)
		stack = &s
	}
	if opts.RedisURL == "" {
		t.Fatal("StartNginx: RedisURL is required")
	}
	dir := t.TempDir()
	for _, sub := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fallback, certPath, keyPath := SelfSigned(t, dir, "fallback", "certagent fallback", nil, nil)

	httpPort := opts.HTTPPort
	if httpPort == 0 {
		httpPort = FreePort(t)
	}
	httpsPort := FreePort(t)
	n := &Nginx{
		HTTPAddr:     "127.0.0.1:" + strconv.Itoa(httpPort),
		HTTPSAddr:    "127.0.0.1:" + strconv.Itoa(httpsPort),
		FallbackCert: fallback,
		ErrorLogPath: filepath.Join(dir, "logs", "error.log"),
		ConfPath:     filepath.Join(dir, "nginx.conf"),
		t:            t,
		dir:          dir,
		done:         make(chan struct{}),
	}

	root := RepoRoot()
	snippet := func(name string) string { return filepath.Join(root, "nginx", name) }
	luaPath := stack.LuaPackagePath()
	if opts.LuaPathPrefix != "" {
		luaPath = opts.LuaPathPrefix + "/?.lua;" + luaPath
	}
	workers := opts.WorkerProcesses
	if workers == 0 {
		workers = 1
	}
	connections := opts.WorkerConnections
	if connections == 0 {
		connections = 256
	}
	logLevel := opts.ErrorLogLevel
	if logLevel == "" {
		logLevel = "warn"
	}
	listenParams := ""
	if opts.HTTPSListen != "" {
		listenParams = " " + opts.HTTPSListen
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers would otherwise switch to nobody and could not read the
		// temporary directory.
		user = "user root;"
	}
	conf := fmt.Sprintf(`# written by testenv.StartNginx
%[1]s%[2]s
daemon off;
master_process on;
worker_processes %[15]d;
pid %[3]s/nginx.pid;
error_log %[4]s %[18]s;
include %[5]s;

events {
    worker_connections %[16]d;
}

http {
    access_log off;
    client_body_temp_path %[3]s/tmp/client_body;
    proxy_temp_path %[3]s/tmp/proxy;
    fastcgi_temp_path %[3]s/tmp/fastcgi;
    uwsgi_temp_path %[3]s/tmp/uwsgi;
    scgi_temp_path %[3]s/tmp/scgi;

    lua_package_path "%[6]s";
    # Debian's nginx 1.22 offers TLS 1.3 only when it is named; the snippets
    # leave the protocols to the installation.
    ssl_protocols TLSv1.2 TLSv1.3;
    include %[7]s;

    server {
        listen 127.0.0.1:%[8]d default_server;
        server_name _;
        include %[9]s;
%[10]s
        location / {
            return 404;
        }
    }

    server {
        listen 127.0.0.1:%[11]d ssl default_server%[19]s;
        server_name _;
        ssl_certificate %[12]s;
        ssl_certificate_key %[13]s;
        include %[14]s;
%[17]s
        location / {
            return 200 "ok\n";
        }
    }
}
`, stack.LoadModules(), user, dir, n.ErrorLogPath, snippet("certagent-main.conf"),
		luaPath, httpSnippet(t, dir, opts),
		httpPort, snippet("certagent-acme.conf"), opts.HTTPServerExtra,
		httpsPort, certPath, keyPath, snippet("certagent-tls.conf"), workers, connections,
		opts.HTTPSServerExtra, logLevel, listenParams)
	if err := os.WriteFile(n.ConfPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{"CERTAGENT_REDIS_URL": opts.RedisURL}
	if opts.KeyPrefix != "" {
		env["CERTAGENT_KEY_PREFIX"] = opts.KeyPrefix
	}
	for k, v := range opts.Env {
		env[k] = v
	}
	n.launch(stack.Binary, env, n.HTTPAddr, n.HTTPSAddr)
	return n
}

// launch starts nginx on n.ConfPath with env added to the environment and
// waits until every addr accepts connections.
func (n *Nginx) launch(bin string, env map[string]string, addrs ...string) {
	t, dir := n.t, n.dir
	t.Helper()
	cmd := exec.Command(bin, "-p", dir, "-c", n.ConfPath, "-e", n.ErrorLogPath)
	cmd.Env = os.Environ()
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	stderr, err := os.Create(filepath.Join(dir, "logs", "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	n.cmd = cmd
	go func() {
		_ = cmd.Wait()
		stderr.Close()
		close(n.done)
	}()
	t.Cleanup(n.Stop)

	deadline := time.Now().Add(15 * time.Second)
	for _, addr := range addrs {
		for {
			select {
			case <-n.done:
				out, _ := os.ReadFile(filepath.Join(dir, "logs", "stderr.log"))
				t.Fatalf("nginx exited during start-up:\n%s\n%s", out, n.ErrorLog())
			default:
			}
			if err := WaitTCP(addr, 200*time.Millisecond); err == nil {
				break
			}
			if time.Now().After(deadline) {
				n.Stop()
				t.Fatalf("nginx did not listen on %s within 15 s:\n%s", addr, n.ErrorLog())
			}
		}
	}
}

// StartNginxConf starts the stack under test on a configuration the test
// wrote itself for Debian's nginx (conf, the text of nginx.conf, adapted by
// NginxStack.Adapt and written to dir) rather than StartNginx's, with env
// added to the environment, and waits until every addr accepts connections.
// dir is the prefix (-p) and holds logs/error.log; the snippets and Lua
// modules are the repository's (RepoRoot). It is stopped when the test ends.
func StartNginxConf(t testing.TB, dir, conf string, env map[string]string, addrs ...string) *Nginx {
	t.Helper()
	stack := Stack(t)
	conf = stack.Adapt(conf)
	for _, sub := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n := &Nginx{
		ErrorLogPath: filepath.Join(dir, "logs", "error.log"),
		ConfPath:     filepath.Join(dir, "nginx.conf"),
		t:            t,
		dir:          dir,
		done:         make(chan struct{}),
	}
	if err := os.WriteFile(n.ConfPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	n.launch(stack.Binary, env, addrs...)
	return n
}

// ErrorLog returns the error log written so far.
func (n *Nginx) ErrorLog() string {
	data, err := os.ReadFile(n.ErrorLogPath)
	if err != nil {
		return ""
	}
	return string(data)
}

// ErrorLogSize returns the current length of the error log, for ErrorLogSince.
func (n *Nginx) ErrorLogSize() int {
	return len(n.ErrorLog())
}

// ErrorLogSince returns the log lines written after the log had size offset.
func (n *Nginx) ErrorLogSince(offset int) []string {
	log := n.ErrorLog()
	if offset > len(log) {
		return nil
	}
	var lines []string
	for _, line := range strings.Split(log[offset:], "\n") {
		if line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

// Stop shuts nginx down (SIGTERM, then SIGKILL of its process group after
// 10 s). Calling it again does nothing.
func (n *Nginx) Stop() {
	if n.cmd == nil {
		return
	}
	pid := n.cmd.Process.Pid
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-n.done
	}
	// Workers of a killed master would keep the ports.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	n.cmd = nil
}
