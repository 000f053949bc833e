package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	pebblePkg         = "github.com/letsencrypt/pebble/v2/cmd/pebble"
	challtestsrvPkg   = "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv"
	pebbleStartLimit  = 30 * time.Second
	pebbleAliveLimit  = 3 * time.Second
	pebbleLogTailLine = 40
)

// PebbleOptions configures StartPebble.
type PebbleOptions struct {
	// HTTPPort is the port Pebble's VA connects to for HTTP-01 challenges:
	// nginx's HTTP listener. Every name resolves to 127.0.0.1.
	HTTPPort int
	// TLSPort is the port the VA uses for TLS-ALPN-01; 0 picks a free port.
	TLSPort int
	// Env is added to Pebble's environment after the defaults
	// (PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0), so it can override them,
	// e.g. PEBBLE_AUTHZREUSE=0 or PEBBLE_CHAIN_LENGTH=2.
	Env map[string]string
	// ValidityPeriod of issued certificates; 0 keeps Pebble's default (90 days).
	// Whole seconds.
	ValidityPeriod time.Duration
	// Profiles are offered besides "default", each with its validity period
	// (whole seconds; 0 is Pebble's default). Pebble picks a random profile
	// for an order that names none, so tests that set this should name one.
	Profiles map[string]time.Duration
}

// Pebble is a Pebble ACME server and a pebble-challtestsrv DNS stub started
// for one test. The DNS stub answers every A query with 127.0.0.1 and AAAA
// queries with nothing, so Pebble validates HTTP-01 against 127.0.0.1:HTTPPort.
type Pebble struct {
	DirectoryURL  string // https://127.0.0.1:PORT/dir
	ManagementURL string // https://127.0.0.1:PORT (roots, intermediates)
	CARootsFile   string // PEM of the CA that signed Pebble's HTTPS listener certificate
	DNSAddr       string // 127.0.0.1:PORT of the DNS stub, UDP and TCP
	DNSManagement string // http://127.0.0.1:PORT, the DNS stub's management API (see SetDNS)
	LogFile       string // Pebble's output
	DNSLogFile    string // pebble-challtestsrv's output

	// Client is an HTTP client that trusts CARootsFile (no other roots).
	Client *http.Client

	t       testing.TB
	pebble  *process
	dnsStub *process
	launch  pebbleLaunch // how Pebble was started, for Restart
	starts  int

	rootsOnce sync.Once
	roots     []*x509.Certificate
	rootsErr  error
}

// StartPebble builds pebble and pebble-challtestsrv (once per test process),
// starts both on free loopback ports, waits until the directory answers, and
// stops both when the test ends. On failure the tail of their logs is printed.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	if opts.HTTPPort <= 0 {
		t.Fatalf("StartPebble: PebbleOptions.HTTPPort is required (the port nginx serves HTTP-01 on)")
	}
	pebbleBin := BuildBinary(t, pebblePkg)
	stubBin := BuildBinary(t, challtestsrvPkg)
	dir := t.TempDir()

	p := &Pebble{t: t, LogFile: filepath.Join(dir, "pebble.log"), DNSLogFile: filepath.Join(dir, "challtestsrv.log")}
	certFile, keyFile, caFile := writePebbleListenerCert(t, dir)
	p.CARootsFile = caFile
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	p.Client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true},
	}

	t.Cleanup(func() {
		if t.Failed() {
			p.report()
		}
		p.pebble.stop()
		p.dnsStub.stop()
	})

	// Ports are picked a moment before the processes bind them; another test
	// may take one in between, so a start that dies early is retried.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		dnsPort := freeTCPAndUDPPort(t)
		p.DNSAddr = "127.0.0.1:" + strconv.Itoa(dnsPort)
		mgmtAddr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
		p.DNSManagement = "http://" + mgmtAddr
		p.dnsStub, lastErr = startProcess(stubBin, p.DNSLogFile, nil,
			"-dnsserver", p.DNSAddr,
			"-management", mgmtAddr,
			"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
			"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
		if lastErr == nil {
			lastErr = p.waitDNS(10 * time.Second)
		}
		if lastErr == nil {
			break
		}
		p.dnsStub.stop()
		p.dnsStub = nil
	}
	if lastErr != nil {
		t.Fatalf("starting pebble-challtestsrv: %v", lastErr)
	}

	for attempt := 0; attempt < 3; attempt++ {
		lastErr = p.startPebble(pebbleBin, dir, certFile, keyFile, opts)
		if lastErr == nil {
			break
		}
		p.pebble.stop()
		p.pebble = nil
	}
	if lastErr != nil {
		t.Fatalf("starting pebble: %v", lastErr)
	}
	return p
}

func (p *Pebble) startPebble(bin, dir, certFile, keyFile string, opts PebbleOptions) error {
	t := p.t
	listen := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	mgmt := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	tlsPort := opts.TLSPort
	if tlsPort == 0 {
		tlsPort = FreePort(t)
	}
	type profile struct {
		Description    string `json:"description"`
		ValidityPeriod uint64 `json:"validityPeriod,omitempty"`
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       opts.HTTPPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"keyAlgorithm":                   "ecdsa",
		"retryAfter":                     map[string]int{"authz": 0, "order": 0},
		"profiles": map[string]profile{"default": {
			Description:    "certagent tests",
			ValidityPeriod: uint64(opts.ValidityPeriod / time.Second),
		}},
	}}
	profiles := cfg["pebble"].(map[string]any)["profiles"].(map[string]profile)
	for name, validity := range opts.Profiles {
		profiles[name] = profile{Description: "certagent tests: " + name, ValidityPeriod: uint64(validity / time.Second)}
	}
	cfgJSON, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	cfgFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(cfgFile, cfgJSON, 0o644); err != nil {
		return err
	}
	env := []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "GOTRACEBACK=all"}
	for k, v := range opts.Env {
		env = append(env, k+"="+v)
	}
	p.DirectoryURL = "https://" + listen + "/dir"
	p.ManagementURL = "https://" + mgmt
	p.launch = pebbleLaunch{bin: bin, env: env, args: []string{"-config", cfgFile, "-dnsserver", p.DNSAddr}}
	return p.start()
}

// Alive fetches the directory with a short timeout (3 s unless ctx has an
// earlier deadline). Pebble can deadlock under parallel load (v2.10.1 did
// when an order was polled; v2.10.3 fixed that one); a test that waits for
// issuance can call this to fail with a clear message instead of hanging
// until the go test timeout.
func (p *Pebble) Alive(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pebbleAliveLimit)
	defer cancel()
	var dir map[string]any
	if err := p.get(ctx, p.DirectoryURL, &dir); err != nil {
		if p.pebble != nil && p.pebble.exited() {
			return fmt.Errorf("pebble is not running (log %s): %w", p.LogFile, err)
		}
		return fmt.Errorf("pebble does not answer its directory (deadlocked?): %w", err)
	}
	if _, ok := dir["newOrder"]; !ok {
		return fmt.Errorf("pebble's directory has no newOrder: %v", dir)
	}
	return nil
}

// Directory returns Pebble's ACME directory object.
func (p *Pebble) Directory(t testing.TB) map[string]any {
	t.Helper()
	var dir map[string]any
	if err := p.get(context.Background(), p.DirectoryURL, &dir); err != nil {
		t.Fatalf("fetching pebble's directory: %v", err)
	}
	return dir
}

// RootCerts returns Pebble's issuing root certificates (/roots/0, /roots/1, ...
// from the management API). They are generated at start and cached.
func (p *Pebble) RootCerts(t testing.TB) []*x509.Certificate {
	t.Helper()
	p.rootsOnce.Do(func() {
		for i := 0; ; i++ {
			certs, err := p.fetchPEM(fmt.Sprintf("%s/roots/%d", p.ManagementURL, i))
			if errors.Is(err, errNotFound) && i > 0 {
				break
			}
			if err != nil {
				p.rootsErr = err
				return
			}
			p.roots = append(p.roots, certs...)
		}
	})
	if p.rootsErr != nil {
		t.Fatalf("fetching pebble's roots: %v", p.rootsErr)
	}
	return p.roots
}

// Roots returns a pool of Pebble's issuing roots, for verifying issued leaves
// (with the intermediates from the stored fullchain, or Intermediates).
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	for _, c := range p.RootCerts(t) {
		pool.AddCert(c)
	}
	return pool
}

// Intermediates returns a pool of the intermediates under root 0
// (/intermediates/0 from the management API).
func (p *Pebble) Intermediates(t testing.TB) *x509.CertPool {
	t.Helper()
	certs, err := p.fetchPEM(p.ManagementURL + "/intermediates/0")
	if err != nil {
		t.Fatalf("fetching pebble's intermediates: %v", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

var ordersLine = regexp.MustCompile(`There are now (\d+) orders in the db`)

// OrdersCreated returns how many orders Pebble has created since it started,
// read from its log ("There are now N orders in the db").
func (p *Pebble) OrdersCreated(t testing.TB) int {
	t.Helper()
	return lastCount(t, p.LogFile, ordersLine)
}

// Resolver returns a resolver that asks the DNS stub, the way Pebble's VA does.
func (p *Pebble) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			if strings.HasPrefix(network, "tcp") {
				return d.DialContext(ctx, "tcp", p.DNSAddr)
			}
			return d.DialContext(ctx, "udp", p.DNSAddr)
		},
	}
}

func (p *Pebble) waitDNS(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := p.Resolver().LookupIP(ctx, "ip4", "ready.certagent.test")
		cancel()
		if err == nil {
			return nil
		}
		if p.dnsStub.exited() {
			return fmt.Errorf("pebble-challtestsrv exited: %s", lastLines(p.DNSLogFile, 10))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the DNS stub on %s did not answer within %s: %v", p.DNSAddr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SetDNS posts body as JSON to the DNS stub's management API, e.g.
// SetDNS(t, "/add-a", map[string]any{"host": "a.example.", "addresses": []string{"192.0.2.1"}})
// or "/add-caa" with "policies": [{"tag": "issue", "value": "ca.example"}].
// The records answer Pebble's VA and any resolver pointed at DNSAddr.
func (p *Pebble) SetDNS(t testing.TB, path string, body any) {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(p.DNSManagement+path, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("DNS stub %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("DNS stub %s %s: %s: %s", path, data, resp.Status, msg)
	}
}

var errNotFound = errors.New("not found")

func (p *Pebble) get(ctx context.Context, url string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("GET %s: %w", url, errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	switch v := into.(type) {
	case nil:
	case *[]byte:
		*v = body
	default:
		if err := json.Unmarshal(body, into); err != nil {
			return fmt.Errorf("GET %s: %w", url, err)
		}
	}
	return nil
}

func (p *Pebble) fetchPEM(url string) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var body []byte
	if err := p.get(ctx, url, &body); err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, body = pem.Decode(body)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", url, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate in the answer", url)
	}
	return certs, nil
}

// report prints the logs' tails; when Pebble no longer answers it first asks
// it for a goroutine dump (SIGQUIT) and prints where its goroutines wait.
func (p *Pebble) report() {
	t := p.t
	if p.pebble != nil && !p.pebble.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := p.Alive(ctx)
		cancel()
		if err != nil {
			t.Logf("pebble: %v; goroutine dump follows", err)
			_ = p.pebble.cmd.Process.Signal(syscall.SIGQUIT)
			p.pebble.wait(3 * time.Second)
			t.Logf("pebble goroutines (state and first pebble frame):\n%s", goroutineSummary(p.LogFile))
		}
	}
	if p.dnsStub != nil {
		t.Logf("--- last lines of %s:\n%s", p.DNSLogFile, lastLines(p.DNSLogFile, 10))
	}
	if p.pebble != nil {
		t.Logf("--- last lines of %s:\n%s", p.LogFile, lastLines(p.LogFile, pebbleLogTailLine))
	}
}

// goroutineSummary condenses a Go goroutine dump in a log file to one line per
// goroutine: its header and the first frame inside pebble's own packages.
func goroutineSummary(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	var header string
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "goroutine "):
			header = line
		case header != "" && strings.Contains(line, "letsencrypt/pebble/v2/") && !strings.HasPrefix(line, "\t"):
			out = append(out, header+"  "+line)
			header = ""
		}
	}
	if len(out) == 0 {
		return "(no goroutine dump found)"
	}
	return strings.Join(out, "\n")
}

func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeTCPAndUDPPort returns a port on 127.0.0.1 free for both TCP and UDP a
// moment ago (the DNS stub listens on both).
func freeTCPAndUDPPort(t testing.TB) int {
	t.Helper()
	return freePort(t, true)
}

// writePebbleListenerCert writes a small CA (listener-ca.pem) and a leaf for
// 127.0.0.1 and localhost signed by it for Pebble's HTTPS listeners.
func writePebbleListenerCert(t testing.TB, dir string) (certFile, keyFile, caFile string) {
	t.Helper()
	ca := NewCert(t, CertSpec{CommonName: "certagent test Pebble listener CA", IsCA: true,
		NotAfter: time.Now().Add(7 * 24 * time.Hour)})
	leaf := NewCert(t, CertSpec{CommonName: "127.0.0.1", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, Parent: ca,
		NotAfter: time.Now().Add(7 * 24 * time.Hour)})
	caFile, _ = ca.Write(t, dir, "listener-ca")
	certFile = filepath.Join(dir, "listener-cert.pem")
	keyFile = filepath.Join(dir, "listener-key.pem")
	if err := os.WriteFile(certFile, leaf.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, caFile
}

// process is a child process whose output goes to a log file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

func startProcess(bin, logPath string, env []string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), log: logFile}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) wait(timeout time.Duration) {
	select {
	case <-p.done:
	case <-time.After(timeout):
	}
}

func (p *process) stop() {
	if p == nil {
		return
	}
	if !p.exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
	p.log.Close()
}
