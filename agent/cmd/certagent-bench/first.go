package main

// The first handshake of new names: how long from a name's first ClientHello
// until nginx serves a certificate that verifies for it.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// firstResult is one run of `certagent-bench first`.
type firstResult struct {
	Scenario string  `json:"scenario"`
	Names    int     `json:"names"`
	Parallel int     `json:"parallel"`
	Seconds  float64 `json:"seconds"` // wall time of the whole run
	// Real: names that got a certificate verifying for them before the
	// deadline; FirstTry: of those, on their very first handshake.
	Real     int `json:"real_certificates"`
	FirstTry int `json:"real_on_first_handshake"`
	// Handshakes: every handshake the run made (retries after a fallback
	// included); Failures: those that did not complete.
	Handshakes int     `json:"handshakes"`
	Failures   int     `json:"failed_handshakes"`
	P50ms      float64 `json:"p50_ms"`
	P95ms      float64 `json:"p95_ms"`
	MaxMs      float64 `json:"max_ms"`
	MinMs      float64 `json:"min_ms"`
	PerSecond  float64 `json:"certificates_per_second"` // Real / Seconds
	FirstMs    float64 `json:"first_handshake_p50_ms"`  // how long the first handshake itself took, median
	FirstMaxMs float64 `json:"first_handshake_max_ms"`
	// Paced: a bare lego run polling at certagent's client's pace.
	Paced bool `json:"paced,omitempty"`
	// CPUms: the CPU time this client (or bare lego) used in the run.
	CPUms       float64  `json:"client_cpu_ms"`
	TimedOut    []string `json:"timed_out,omitempty"`
	FirstFailed string   `json:"first_failure,omitempty"`
}

// nameTiming is what happened to one name.
type nameTiming struct {
	real       bool
	firstTry   bool
	began      time.Time     // the first ClientHello
	elapsed    time.Duration // first ClientHello to the verified certificate
	first      time.Duration // the first handshake alone
	handshakes int
	failures   int
	lastErr    error
}

func first(args []string) error {
	fs := flag.NewFlagSet("first", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:443", "nginx TLS address")
	pattern := fs.String("pattern", "", "name pattern (fmt, one %d); the names -start .. -start+-names-1 must be new to nginx and the agent")
	start := fs.Int("start", 0, "first index of -pattern")
	count := fs.Int("names", 50, "number of names (M)")
	parallel := fs.Int("p", 1, "names handled at once (P): 1 is one name after the other")
	rootsFile := fs.String("roots", "", "PEM file of the CA root(s) the served certificate must verify against (required)")
	deadline := fs.Duration("deadline", 60*time.Second, "per name: how long to keep retrying after its first ClientHello")
	retry := fs.Duration("retry", 20*time.Millisecond, "pause before a new connection after a handshake served something that does not verify")
	maxTLS := fs.String("tls", "", "1.2 or 1.3 to fix the version (default: the newest both speak)")
	name := fs.String("scenario", "", "label of this run")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	traceFile := fs.String("trace", "", "append one JSON line per name to this file: when its first ClientHello went out "+
		"and when a verified certificate came back (for `certagent-bench timeline`)")
	_ = fs.Parse(args)

	if *pattern == "" || *count <= 0 || *parallel <= 0 {
		return errors.New("first: -pattern, -names > 0 and -p > 0 are required")
	}
	roots, err := loadRoots(*rootsFile)
	if err != nil {
		return err
	}
	cfg, err := clientTLS(*maxTLS)
	if err != nil {
		return err
	}

	trace, err := openTrace(*traceFile)
	if err != nil {
		return err
	}
	// Once a name went without a certificate for the whole deadline (the CA
	// hung), the names left are not tried: the run is void anyway, and it is
	// said within one deadline instead of one per name.
	var timedOut atomic.Bool
	r := inParallel(*pattern, *start, *count, *parallel, func(n string) nameTiming {
		if timedOut.Load() {
			return nameTiming{lastErr: errors.New("not tried: a name before got no certificate")}
		}
		t := untilVerified(*addr, n, cfg, roots, *deadline, *retry)
		if !t.real {
			timedOut.Store(true)
		}
		trace.add(n, t)
		return t
	})
	if err := trace.close(); err != nil {
		return err
	}
	r.Scenario, r.Parallel = *name, *parallel
	if *jsonOut {
		return json.NewEncoder(os.Stdout).Encode(r)
	}
	fmt.Printf("%-34s %d names, %d at once: %d real (%d on the first handshake) in %.1f s, %.2f certificates/s; "+
		"first ClientHello to a verified certificate p50 %.0f ms p95 %.0f ms max %.0f ms; "+
		"first handshake p50 %.0f ms max %.0f ms; %d handshakes, %d failed\n",
		r.Scenario, r.Names, r.Parallel, r.Real, r.FirstTry, r.Seconds, r.PerSecond, r.P50ms, r.P95ms, r.MaxMs,
		r.FirstMs, r.FirstMaxMs, r.Handshakes, r.Failures)
	if len(r.TimedOut) > 0 {
		fmt.Printf("  no verified certificate within %s: %v\n", *deadline, r.TimedOut)
	}
	if r.FirstFailed != "" {
		fmt.Println("  first failed handshake:", r.FirstFailed)
	}
	return nil
}

// inParallel runs each of the names -pattern makes for start..start+count-1,
// parallel at a time, and summarizes how they went.
func inParallel(pattern string, start, count, parallel int, each func(name string) nameTiming) firstResult {
	names := make(chan string)
	go func() {
		for i := start; i < start+count; i++ {
			names <- fmt.Sprintf(pattern, i)
		}
		close(names)
	}()
	var (
		mu      sync.Mutex
		timings = map[string]nameTiming{}
		wg      sync.WaitGroup
	)
	began, cpuBefore := time.Now(), cpuTime()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range names {
				t := each(n)
				mu.Lock()
				timings[n] = t
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r := summarizeFirst(timings, time.Since(began))
	r.CPUms = float64(cpuTime()-cpuBefore) / float64(time.Millisecond)
	return r
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

func loadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, errors.New("-roots is required")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return pool, nil
}

// untilVerified opens new connections with SNI name until one serves a chain
// that verifies for name against roots, or deadline after the first
// ClientHello. The clock starts when the first handshake starts, after the
// TCP connection is up, so it measures from the ClientHello.
func untilVerified(addr, name string, base *tls.Config, roots *x509.CertPool, deadline, retry time.Duration) nameTiming {
	var t nameTiming
	var began time.Time
	for {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			cfg := base.Clone()
			cfg.ServerName = name
			tc := tls.Client(conn, cfg)
			_ = conn.SetDeadline(time.Now().Add(deadline + 10*time.Second))
			hsStart := time.Now()
			if began.IsZero() {
				began, t.began = hsStart, hsStart
			}
			err = tc.Handshake()
			if t.handshakes == 0 {
				t.first = time.Since(hsStart)
			}
			t.handshakes++
			if err == nil {
				chain := tc.ConnectionState().PeerCertificates
				if verifyChain(chain, name, roots) == nil {
					t.elapsed = time.Since(began)
					t.real = true
					t.firstTry = t.handshakes == 1
					conn.Close()
					return t
				}
			}
			conn.Close()
		}
		if err != nil {
			t.failures++
			t.lastErr = err
		}
		if !began.IsZero() && time.Since(began) > deadline {
			return t
		}
		if began.IsZero() && t.failures > 50 {
			return t // nginx does not accept connections at all
		}
		time.Sleep(retry)
	}
}

func verifyChain(chain []*x509.Certificate, name string, roots *x509.CertPool) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
	return err
}

func summarizeFirst(timings map[string]nameTiming, wall time.Duration) firstResult {
	r := firstResult{Names: len(timings), Seconds: wall.Seconds()}
	var elapsed, firsts []time.Duration
	for n, t := range timings {
		r.Handshakes += t.handshakes
		r.Failures += t.failures
		if t.handshakes > 0 {
			firsts = append(firsts, t.first)
		}
		if t.real {
			r.Real++
			elapsed = append(elapsed, t.elapsed)
			if t.firstTry {
				r.FirstTry++
			}
		} else {
			r.TimedOut = append(r.TimedOut, n)
		}
		if t.lastErr != nil && r.FirstFailed == "" {
			r.FirstFailed = fmt.Sprintf("%s: %v", n, t.lastErr)
		}
	}
	sort.Strings(r.TimedOut)
	sort.Slice(elapsed, func(i, j int) bool { return elapsed[i] < elapsed[j] })
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	r.P50ms = percentile(elapsed, 0.50)
	r.P95ms = percentile(elapsed, 0.95)
	if len(elapsed) > 0 {
		r.MinMs = percentile(elapsed, 0)
		r.MaxMs = percentile(elapsed, 1)
	}
	r.FirstMs = percentile(firsts, 0.50)
	r.FirstMaxMs = percentile(firsts, 1)
	if wall > 0 {
		r.PerSecond = float64(r.Real) / wall.Seconds()
	}
	return r
}

// firstReport prints the JSON results of `first` in FILE (one run a line)
// as a Markdown table, in the file's order.
func firstReport(args []string) error {
	if len(args) != 1 {
		return errors.New("first-report FILE")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	fmt.Println("| scenario | names | at once | verified certificates | on the first handshake | p50 ms | p95 ms | max ms | first handshake p50 ms | handshakes | failed | certificates/s | ratio to bare lego (paced) | wall s |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	n := 0
	var fixed, paced float64 // certificates/s of the last bare lego runs, fixed polls and paced
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var r firstResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		// A bare lego row (lego.go) makes no handshakes: its times are the
		// orders', and it is the baseline of the rows after it.
		firstTry, ratio := fmt.Sprint(r.FirstTry), "-"
		switch {
		case r.Handshakes == 0 && r.Paced:
			firstTry, paced = "-", r.PerSecond
		case r.Handshakes == 0:
			firstTry, fixed = "-", r.PerSecond
		case fixed > 0 && paced > 0:
			ratio = fmt.Sprintf("%.2f (%.2f)", r.PerSecond/fixed, r.PerSecond/paced)
		case fixed > 0:
			ratio = fmt.Sprintf("%.2f", r.PerSecond/fixed)
		}
		fmt.Printf("| %s | %d | %d | %d | %s | %.0f | %.0f | %.0f | %.0f | %d | %d | %.2f | %s | %.1f |\n",
			r.Scenario, r.Names, r.Parallel, r.Real, firstTry, r.P50ms, r.P95ms, r.MaxMs, r.FirstMs,
			r.Handshakes, r.Failures, r.PerSecond, ratio, r.Seconds)
		n++
	}
	if n == 0 {
		return errors.New("no results")
	}
	return nil
}
