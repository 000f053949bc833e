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

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// Ports are chosen below Linux's ephemeral range (32768 and up), at random:
// a port the kernel hands out for listen(":0") is also what it hands out to
// the next outgoing connection of any process, which then holds it when the
// test's server starts. Chosen at random, two test processes running at once
// rarely pick the same one, and one process never hands a port out twice.
const (
	portsFrom = 10000
	portsTo   = 32768
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that this process has not handed out before.
func FreePort(t testing.TB) int {
	t.Helper()
	return freePort(t, false)
}

// freePort is FreePort; with udpToo the port is also free for UDP.
func freePort(t testing.TB, udpToo bool) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := portsFrom + mathrand.IntN(portsTo-portsFrom)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		free := true
		if udpToo {
			u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				free = false
			} else {
				u.Close()
			}
		}
		l.Close()
		if free {
			portsGiven[port] = true
			return port
		}
	}
	t.Fatal("finding a free port: none of 1000 tried was free")
	return 0
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
