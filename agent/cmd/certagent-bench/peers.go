package main

// The inventory exchange between two sites (docs/benchmarks.md): a site
// holding many certificates (stored by store, then served by peers-serve) and a new, empty
// site catching up from it (peers-catchup), each in its own process so that
// each one's peak RSS is its own.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/peer"
	"github.com/certagent/certagent/agent/store"
)

// peersServe answers the peer API of one site until SIGINT or SIGTERM. It
// makes its own TLS certificate for 127.0.0.1 and writes it to -ca-out for
// the other side to trust.
func peersServe(args []string) error {
	fs := flag.NewFlagSet("peers-serve", flag.ExitOnError)
	redisAddr := fs.String("redis", "127.0.0.1:6379", "Redis host:port")
	prefix := fs.String("prefix", "", "key prefix")
	site := fs.String("site", "a", "this site's id")
	peerID := fs.String("peer", "b", "the peer site allowed to call")
	secretFile := fs.String("secret-file", "", "the fleet's shared secret")
	listen := fs.String("listen", "127.0.0.1:0", "address of the peer API")
	dir := fs.String("dir", ".", "where to write peer.pem, peer.key and the address (addr)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the serving here")
	_ = fs.Parse(args)
	stopProfile, err := profileCPU(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		return err
	}
	certFile, keyFile, err := selfSigned(*dir)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
	defer rdb.Close()
	srv, err := peer.NewServer(peer.ServerConfig{Site: *site, Secret: []byte(strings.TrimSpace(string(secret))),
		Peers: []string{*peerID}, Store: store.New(rdb, store.Keys{Prefix: *prefix}),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	if err := srv.Start(*listen, certFile, keyFile); err != nil {
		return err
	}
	if err := os.WriteFile(*dir+"/addr", []byte(srv.Addr()), 0o644); err != nil {
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// profileCPU starts a CPU profile written to file ("": none) and returns
// what stops it.
func profileCPU(file string) (stop func(), err error) {
	if file == "" {
		return func() {}, nil
	}
	out, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		_ = out.Close()
	}, nil
}

// selfSigned writes a certificate for 127.0.0.1 and its key to dir.
func selfSigned(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "peer"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = dir+"/peer.pem", dir+"/peer.key"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// catchupResult is one line of peers-catchup's output.
type catchupResult struct {
	Certificates     int64   `json:"certificates"`
	CatchUpSeconds   float64 `json:"catch_up_seconds"`
	Exchanges        int     `json:"exchanges"`
	BytesToNew       int64   `json:"bytes_to_new_site"`
	BytesFromNew     int64   `json:"bytes_from_new_site"`
	NewSitePeakMB    float64 `json:"new_site_peak_rss_mb"`
	ServingPeakMB    float64 `json:"serving_site_peak_rss_mb"`
	InStepBytes      int64   `json:"in_step_bytes_per_exchange"`
	InStepSeconds    float64 `json:"in_step_seconds_per_exchange"`
	InStepExchanges  int     `json:"in_step_exchanges"`
	ServingRSSBefore float64 `json:"serving_site_rss_mb_before"`
}

// peersCatchup is a new, empty site: it exchanges inventories with the
// serving site until it holds -want certificates, then measures exchanges
// between the two sites in step. The traffic is counted by a TCP relay in
// front of the serving site.
func peersCatchup(args []string) error {
	fs := flag.NewFlagSet("peers-catchup", flag.ExitOnError)
	redisAddr := fs.String("redis", "127.0.0.1:6379", "Redis host:port of this (new) site")
	prefix := fs.String("prefix", "", "key prefix")
	site := fs.String("site", "b", "this site's id")
	peerID := fs.String("peer", "a", "the serving site's id")
	dir := fs.String("dir", ".", "the serving site's -dir (peer.pem, addr)")
	secretFile := fs.String("secret-file", "", "the fleet's shared secret")
	servePid := fs.Int("serve-pid", 0, "pid of peers-serve, for its peak RSS")
	want := fs.Int64("want", 0, "certificates the new site must hold")
	inStep := fs.Int("in-step", 5, "exchanges to measure once in step")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the catching up here")
	_ = fs.Parse(args)
	stop, err := profileCPU(*cpuProfile)
	if err != nil {
		return err
	}
	defer stop()
	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		return err
	}
	addr, err := os.ReadFile(*dir + "/addr")
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(*dir + "/peer.pem")
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("reading the serving site's certificate: %v", err)
	}
	relay, err := newRelay(string(addr))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
	defer rdb.Close()
	st := store.New(rdb, store.Keys{Prefix: *prefix})
	f, err := peer.NewFleet(peer.Config{Site: *site, Secret: []byte(strings.TrimSpace(string(secret))),
		Peers: []peer.PeerConfig{{ID: *peerID, URL: "https://" + relay.addr}}, RootCAs: roots, Store: st,
		Timeout: 30 * time.Second, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		return err
	}
	ctx := context.Background()
	res := catchupResult{ServingRSSBefore: rssMB(*servePid, "VmRSS")}
	start := time.Now()
	for {
		res.Exchanges++
		if err := f.SyncNow(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "exchange:", err)
		}
		if res.Certificates, _, err = st.CertCounts(ctx); err != nil {
			return err
		}
		if res.Certificates >= *want || res.Exchanges >= 5 {
			break
		}
	}
	res.CatchUpSeconds = time.Since(start).Seconds()
	res.BytesToNew, res.BytesFromNew = relay.down.Swap(0), relay.up.Swap(0)
	inStepStart := time.Now()
	for range *inStep {
		if err := f.SyncNow(ctx); err != nil {
			return err
		}
	}
	res.InStepExchanges = *inStep
	res.InStepSeconds = time.Since(inStepStart).Seconds() / float64(*inStep)
	res.InStepBytes = (relay.down.Load() + relay.up.Load()) / int64(*inStep)
	res.NewSitePeakMB = rssMB(os.Getpid(), "VmHWM")
	res.ServingPeakMB = rssMB(*servePid, "VmHWM")
	return json.NewEncoder(os.Stdout).Encode(res)
}

// relay forwards TCP connections to a target and counts the bytes each way.
type relay struct {
	addr     string
	up, down atomic.Int64 // to the target, from the target
}

func newRelay(target string) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{addr: ln.Addr().String()}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go r.forward(in, target)
		}
	}()
	return r, nil
}

func (r *relay) forward(in net.Conn, target string) {
	defer in.Close()
	out, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer out.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(counting{out, &r.up}, in)
		_ = out.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(counting{in, &r.down}, out)
	_ = in.(*net.TCPConn).CloseWrite()
	<-done
}

// counting is a writer that adds what it writes to n as it goes.
type counting struct {
	w io.Writer
	n *atomic.Int64
}

func (c counting) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// rssMB reads a memory line (VmRSS, VmHWM) of /proc/<pid>/status, in MB.
func rssMB(pid int, field string) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}
