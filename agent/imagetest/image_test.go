//go:build imagetest

// Package imagetest runs the certagent image the way operators do: on a
// private Docker network with a Pebble container as the CA. scripts/test-image
// builds the images and runs it (go test -tags imagetest); it needs a Docker
// engine, so it is not part of the default go test ./... run.
package imagetest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// image is the certagent image under test; scripts/test-image builds it.
var image = envOr("CERTAGENT_TEST_IMAGE", "certagent:test")

// pebbleImage runs Pebble and its DNS stub (docker/pebble/Dockerfile);
// scripts/test-image builds it.
var pebbleImage = envOr("CERTAGENT_TEST_PEBBLE_IMAGE", "certagent-pebble:test")

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

type site struct {
	t         *testing.T
	prefix    string
	network   string
	container string // the certagent container
	volume    string
	env       []string
	mounts    []string
	https     string // 127.0.0.1:port published for 443
	http      string // 127.0.0.1:port published for 80
	pebbleAPI string // https://127.0.0.1:port of Pebble's management API
	caPool    *http.Client
	roots     *x509.CertPool
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startSite starts Pebble, its DNS stub and the certagent container on a new
// private network and removes them all when the test ends.
func startSite(t *testing.T) *site {
	t.Helper()
	s := &site{t: t, prefix: "certagent-test-" + randomSuffix()}
	s.network = s.prefix
	s.container = s.prefix + "-agent"
	s.volume = s.prefix + "-data"
	docker(t, "network", "create", s.network)
	docker(t, "volume", "create", s.volume)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", "--tail", "80", s.container).CombinedOutput()
			t.Logf("certagent container log:\n%s", out)
			out, _ = exec.Command("docker", "logs", "--tail", "30", s.prefix+"-pebble").CombinedOutput()
			t.Logf("pebble log:\n%s", out)
		}
		for _, c := range []string{s.container, s.prefix + "-pebble", s.prefix + "-dns"} {
			_ = exec.Command("docker", "rm", "-f", "-v", c).Run()
		}
		_ = exec.Command("docker", "volume", "rm", "-f", s.volume).Run()
		_ = exec.Command("docker", "network", "rm", s.network).Run()
	})

	// Pebble's HTTPS listener certificate, for its name on the network.
	dir := t.TempDir()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "certagent image test CA", IsCA: true})
	listener := testenv.NewCert(t, testenv.CertSpec{CommonName: "pebble", DNSNames: []string{"pebble", "localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Parent: ca})
	ca.Write(t, dir, "ca")
	listener.Write(t, dir, "listener")
	if err := os.WriteFile(filepath.Join(dir, "pebble.json"), []byte(`{"pebble": {
		"listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
		"certificate": "/pebble/listener.pem", "privateKey": "/pebble/listener.key",
		"httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false,
		"retryAfter": {"authz": 0, "order": 0}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mounts = []string{"-v", dir + ":/pebble:ro"}
	pool := x509.NewCertPool()
	pool.AddCert(ca.X509)
	s.caPool = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	s.env = []string{
		"-e", "CERTAGENT_ACME_DIRECTORY=https://pebble:14000/dir",
		"-e", "CERTAGENT_CA_ROOTS=/pebble/ca.pem",
		"-e", "CERTAGENT_ALLOW=*.example.test",
		"-e", "CERTAGENT_EMAIL=ops@example.test",
	}
	docker(t, "run", "-d", "--name", s.prefix+"-dns", "--network", s.network, "--network-alias", "dns",
		"-p", "127.0.0.1::8055", pebbleImage,
		"pebble-challtestsrv", "-defaultIPv6", "", "-dnsserver", ":8053",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "", "-management", ":8055")
	docker(t, "run", "-d", "--name", s.prefix+"-pebble", "--network", s.network, "--network-alias", "pebble",
		"-p", "127.0.0.1::15000", "-v", dir+":/pebble:ro", pebbleImage,
		"pebble", "-config", "/pebble/pebble.json", "-dnsserver", "dns:8053")
	s.pebbleAPI = "https://" + docker(t, "port", s.prefix+"-pebble", "15000/tcp")
	s.waitPebble()

	s.startAgent()
	// Every name resolves to the certagent container, as DNS would in production.
	agentIP := docker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+s.network+"\").IPAddress}}", s.container)
	dnsAPI := "http://" + docker(t, "port", s.prefix+"-dns", "8055/tcp")
	resp, err := http.Post(dnsAPI+"/set-default-ipv4", "application/json", strings.NewReader(`{"ip":"`+agentIP+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("setting the DNS stub's address: %s", resp.Status)
	}
	return s
}

// startAgent (re)creates the certagent container on the same volume.
func (s *site) startAgent() {
	s.t.Helper()
	args := append([]string{"run", "-d", "--name", s.container, "--network", s.network,
		"-p", "127.0.0.1::443", "-p", "127.0.0.1::80", "-v", s.volume + ":/var/lib/certagent"}, s.env...)
	args = append(args, s.mounts...)
	args = append(args, image)
	docker(s.t, args...)
	s.https = docker(s.t, "port", s.container, "443/tcp")
	s.http = docker(s.t, "port", s.container, "80/tcp")
	s.waitHealthy()
}

func (s *site) waitHealthy() {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		status := docker(s.t, "inspect", "-f", "{{.State.Health.Status}}", s.container)
		if status == "healthy" {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the certagent container is %s after 60 s; health checks:\n%s", status,
				docker(s.t, "inspect", "-f", "{{range .State.Health.Log}}{{.ExitCode}}: {{.Output}}\n{{end}}", s.container))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (s *site) waitPebble() {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := s.caPool.Get(s.pebbleAPI + "/roots/0")
		if err == nil {
			body := new(bytes.Buffer)
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				s.roots = x509.NewCertPool()
				if !s.roots.AppendCertsFromPEM(body.Bytes()) {
					s.t.Fatal("Pebble's root is not PEM")
				}
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("Pebble's management API did not answer within 30 s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *site) handshake(name string) ([]*x509.Certificate, error) {
	// Longer than first_handshake_wait: nginx may hold a first handshake.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", s.https,
		&tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// issued waits until the container serves name a certificate from Pebble.
func (s *site) issued(name string, within time.Duration) *x509.Certificate {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		chain, err := s.handshake(name)
		if err == nil {
			inter := x509.NewCertPool()
			for _, c := range chain[1:] {
				inter.AddCert(c)
			}
			if _, verr := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: s.roots, Intermediates: inter}); verr == nil {
				return chain[0]
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s not served a certificate that verifies against Pebble's root within %s (last error %v)", name, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// linesWith returns the lines of out that contain one of texts.
func linesWith(out []byte, texts ...string) string {
	var b strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		for _, text := range texts {
			if strings.Contains(sc.Text(), text) {
				b.WriteString(sc.Text() + "\n")
				break
			}
		}
	}
	return b.String()
}

var ordersLine = regexp.MustCompile(`There are now (\d+) orders in the db`)

func (s *site) orders() int {
	s.t.Helper()
	out, _ := exec.Command("docker", "logs", s.prefix+"-pebble").CombinedOutput()
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := ordersLine.FindSubmatch(sc.Bytes()); m != nil {
			n, _ = strconv.Atoi(string(m[1]))
		}
	}
	return n
}

// exec runs a command in the certagent container and returns its output and
// whether it exited 0.
func (s *site) exec(args ...string) (string, bool) {
	out, err := exec.Command("docker", append([]string{"exec", s.container}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

func (s *site) pidOf(program string) string {
	out, _ := s.exec("pgrep", "-x", program)
	return out
}

// restarted waits until supervisord has started program again after a
// kill -9 of the process before.
func (s *site) restarted(program, before string) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for after := s.pidOf(program); after == "" || after == before; after = s.pidOf(program) {
		if time.Now().After(deadline) {
			s.t.Fatalf("%s was not restarted within 30 s of kill -9", program)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logCount counts the lines of the container's output that contain text.
func (s *site) logCount(text string) int {
	s.t.Helper()
	out, _ := exec.Command("docker", "logs", s.container).CombinedOutput()
	return strings.Count(string(out), text)
}

// nginxMaster is the pid in nginx's pid file when that process is nginx.
func (s *site) nginxMaster() string {
	out, ok := s.exec("sh", "-c", `pid=$(cat /run/certagent/nginx.pid) && [ "$(cat /proc/$pid/comm)" = nginx ] && echo $pid`)
	if !ok {
		return ""
	}
	return out
}

func TestImage(t *testing.T) {
	s := startSite(t)

	// A new name: nginx holds the first handshake while Pebble issues, or,
	// when the agent has not marked the name within the grace, serves the
	// generated fallback; then the certificate from Pebble.
	chain, err := s.handshake("new-1.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if issuer := chain[0].Issuer.CommonName; chain[0].Subject.CommonName != "certagent fallback" && !strings.HasPrefix(issuer, "Pebble") {
		t.Fatalf("first handshake served %q from %q, want the generated fallback or Pebble's certificate", chain[0].Subject, issuer)
	}
	first := s.issued("new-1.example.test", 10*time.Second)
	if n := s.orders(); n != 1 {
		t.Errorf("Pebble counted %d orders, want 1", n)
	}

	// kill -9 of the agent: supervisord restarts it and the next name is issued.
	before := s.pidOf("certagent")
	s.exec("pkill", "-9", "-x", "certagent")
	s.restarted("certagent", before)
	if _, err := s.handshake("new-2.example.test"); err != nil {
		t.Fatal(err)
	}
	s.issued("new-2.example.test", 15*time.Second)

	s.killNginxMaster(first)
	fourth := s.killRedis()

	// The health check fails when nginx's master is gone, even while
	// workers still answer on the ports: here a pid file naming no process.
	out, ok := s.exec("sh", "-c", "mkdir -p /tmp/gone && echo 999999 >/tmp/gone/nginx.pid && CERTAGENT_RUN_DIR=/tmp/gone certagent-healthcheck")
	if ok || !strings.Contains(out, "master is not running") {
		t.Errorf("the health check with nginx's master gone passed or said %q; want a failure naming the master", out)
	}

	s.stopUnderLoad()
	ordersBeforeRestart := s.orders()

	// The same volume in a new container: earlier certificates are served
	// without a new order, and the name whose order the stop cut is issued.
	docker(t, "rm", s.container)
	s.startAgent()
	again, err := s.handshake("new-1.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Equal(first) {
		t.Error("after the restart new-1.example.test is not served its earlier certificate")
	}
	if got := s.issued("new-4.example.test", 5*time.Second); !got.Equal(fourth) {
		t.Error("after the restart new-4.example.test is not served its earlier certificate")
	}
	s.issued("new-3.example.test", 30*time.Second)
	// new-3's order was cut by the stop; Pebble may still take up the
	// request it held while paused, so new-3 has one or two orders.
	if got := s.orders() - ordersBeforeRestart; got < 1 || got > 2 {
		t.Errorf("Pebble counted %d orders since the stop, want 1 or 2, all for new-3.example.test", got)
	}
}

// killNginxMaster kills nginx's master with SIGKILL, leaving its workers:
// supervisord starts one new master, which binds the ports once the workers
// are gone, and no old worker is left.
func (s *site) killNginxMaster(served *x509.Certificate) {
	t := s.t
	master := s.nginxMaster()
	if master == "" {
		t.Fatal("no nginx master before the kill")
	}
	spawns := s.logCount("spawned: 'nginx'")
	s.exec("kill", "-9", master)
	deadline := time.Now().Add(20 * time.Second)
	for {
		now := s.nginxMaster()
		if now != "" && now != master {
			if chain, err := s.handshake("new-1.example.test"); err == nil && chain[0].Equal(served) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not back within 20 s of kill -9 of its master %s (master now %q)", master, now)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A few seconds more: a master that cannot bind would be restarted
	// again and again.
	time.Sleep(5 * time.Second)
	if got := s.logCount("spawned: 'nginx'"); got != spawns+1 {
		t.Errorf("supervisord started nginx %d times after the kill, want once", got-spawns)
	}
	if n := s.logCount("Address already in use"); n != 0 {
		t.Errorf("%d bind errors after the kill: a worker of the old master kept the ports", n)
	}
	master = s.nginxMaster()
	out, _ := s.exec("ps", "-o", "pid=,ppid=", "-C", "nginx")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] != master && f[1] != master {
			t.Errorf("nginx process %s (parent %s) is not the master %s nor its worker: an orphan of the old master", f[0], f[1], master)
		}
	}
	if out, ok := s.exec("certagent-healthcheck"); !ok {
		t.Errorf("health check after the recovery: %s", out)
	}
}

// killRedis kills the bundled Redis with SIGKILL: supervisord restarts it on
// its append-only file, and a new name is issued.
func (s *site) killRedis() *x509.Certificate {
	t := s.t
	before := s.pidOf("redis-server")
	s.exec("pkill", "-9", "-x", "redis-server")
	s.restarted("redis-server", before)
	if _, err := s.handshake("new-4.example.test"); err != nil {
		t.Fatal(err)
	}
	cert := s.issued("new-4.example.test", 30*time.Second)
	if n := s.orders(); n != 3 {
		t.Errorf("Pebble counted %d orders after Redis's restart, want 3: the certificates survived in its file", n)
	}
	return cert
}

// stopUnderLoad runs docker stop while a client holds an unfinished request,
// another an idle TLS connection, and the agent an order (Pebble is paused,
// so it cannot finish): the container stops by itself within Docker's 10 s,
// without a process killed, and Redis saves.
func (s *site) stopUnderLoad() {
	t := s.t
	pebble := s.prefix + "-pebble"
	docker(t, "pause", pebble)
	t.Cleanup(func() { _ = exec.Command("docker", "unpause", pebble).Run() })
	go func() { _, _ = s.handshake("new-3.example.test") }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := s.exec("redis-cli", "get", "certagent:issuing:new-3.example.test")
		if out == "issuing" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not take new-3.example.test within 15 s (issuing mark %q)", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	slow, err := net.Dial("tcp", s.http)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := slow.Write([]byte("GET / HTTP/1.1\r\nHost: slow.example.test\r\n")); err != nil {
		t.Fatal(err)
	}
	idle, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", s.https,
		&tls.Config{ServerName: "new-1.example.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	start := time.Now()
	docker(t, "stop", "-t", "10", s.container)
	took := time.Since(start)
	docker(t, "unpause", pebble)
	var state struct{ ExitCode int }
	if err := json.Unmarshal([]byte(docker(t, "inspect", "-f", "{{json .State}}", s.container)), &state); err != nil {
		t.Fatal(err)
	}
	t.Logf("docker stop with a slow client, an idle TLS connection and an order in flight: %s, exit %d", took.Round(10*time.Millisecond), state.ExitCode)
	if state.ExitCode != 0 {
		t.Errorf("docker stop: the container exited with %d, want 0 (137: killed at Docker's 10 s)", state.ExitCode)
	}
	if n := s.logCount("with SIGKILL"); n != 0 {
		t.Errorf("supervisord killed %d programs at the end of their stop budget", n)
	}
	if s.logCount("DB saved on disk") == 0 {
		t.Error("Redis did not save before the container stopped")
	}
	out, _ := exec.Command("docker", "logs", "--tail", "60", s.container).CombinedOutput()
	if t.Failed() {
		t.Logf("the stopped container's log:\n%s", out)
	} else {
		t.Logf("supervisord's stop:\n%s", linesWith(out, "SIGTERM", "stopped", "waiting for"))
	}
}
