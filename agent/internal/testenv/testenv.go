// Package testenv starts the real processes the integration and end-to-end
// tests talk to (redis-server, Pebble, nginx, the agent binary) on loopback and
// free ports, and stops them when the test ends. A missing program fails the
// test: nothing here skips.
package testenv

import (
	"crypto/x509"
	"fmt"
	mathrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// RepoRoot returns the root of this checkout.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// Require returns the path of program, failing the test when it is not installed.
func Require(t testing.TB, program string, extraDirs ...string) string {
	t.Helper()
	for _, dir := range extraDirs {
		candidate := filepath.Join(dir, program)
		if _, err := os.Stat(candidate); err == nil {
			return candidate
		}
	}
	path, err := exec.LookPath(program)
	if err != nil {
		t.Fatalf("%s is required for this test and is not installed (scripts/test installs it): %v", program, err)
	}
	return path
}

var portsMu sync.Mutex

// Ports are chosen at random from a range below Linux's ephemeral ports
// (32768 and up), which the kernel also hands to outgoing connections of any
// process. A port is claimed for the whole machine by creating a file named
// after it in portsDir (O_EXCL), so test binaries running at once never pick
// the same one, nor one that another's stopped server is about to take back.
// Claims are not released: the range is large, and a claim older than
// portClaimLife, longer than scripts/test lets a test binary run, is stale. Every port also keeps port+10000 free,
// which Redis Cluster uses for its bus.
const (
	portsFrom     = 10000
	portsTo       = 20000
	busOffset     = 10000
	portClaimLife = 20 * time.Minute
)

var portsDir = filepath.Join(os.TempDir(), "certagent-test-ports")

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no other test process on this machine has been handed recently.
func FreePort(t testing.TB) int {
	t.Helper()
	return freePort(t, false)
}

// freePort is FreePort; with udpToo the port is also free for UDP.
func freePort(t testing.TB, udpToo bool) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	if err := os.MkdirAll(portsDir, 0o777); err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	for range 1000 {
		port := portsFrom + mathrand.IntN(portsTo-portsFrom)
		if !claimPort(port) {
			continue
		}
		if bindable(port, udpToo) && bindable(port+busOffset, false) {
			return port
		}
	}
	t.Fatal("finding a free port: none of 1000 tried was free")
	return 0
}

// claimPort records port as taken, unless a recent claim exists.
func claimPort(port int) bool {
	path := filepath.Join(portsDir, strconv.Itoa(port))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
	if err == nil {
		f.Close()
		return true
	}
	info, statErr := os.Stat(path)
	if statErr != nil || time.Since(info.ModTime()) < portClaimLife {
		return false
	}
	// Stale: take it over by touching it; a race here only costs a retry.
	now := time.Now()
	return os.Chtimes(path, now, now) == nil
}

func bindable(port int, udpToo bool) bool {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	if udpToo {
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}

// WaitTCP waits until addr accepts connections or the timeout passes.
func WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not accept connections within %s: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
)

// BuildBinary builds the Go main package pkg (an import path, or a path relative
// to the repository root such as "./agent/cmd/certagent") once per test process
// and returns the path of the executable.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if path, ok := buildCache[pkg]; ok {
		return path
	}
	dir, err := os.MkdirTemp("", "certagent-bin-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, output)
	}
	buildCache[pkg] = out
	return out
}

// SelfSigned writes a self-signed certificate for the given DNS names and IP
// addresses into dir as <base>.pem and <base>.key and returns the certificate
// and both paths.
func SelfSigned(t testing.TB, dir, base string, commonName string, dnsNames []string, ips []net.IP) (*x509.Certificate, string, string) {
	t.Helper()
	c := NewCert(t, CertSpec{CommonName: commonName, DNSNames: dnsNames, IPs: ips, IsCA: true})
	certPath, keyPath := c.Write(t, dir, base)
	return c.X509, certPath, keyPath
}
