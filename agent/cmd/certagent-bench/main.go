// Command certagent-bench measures the TLS handshake path of nginx with
// certagent: K clients open full new TLS connections (no session resumption)
// for T seconds and it reports handshakes per second, latency percentiles,
// which certificate was served, the server's CPU time per handshake and the
// Redis commands and stream entries the handshakes caused.
//
//	certagent-bench seed -redis 127.0.0.1:6379 -names 10000 -static-dir /tmp/b
//	certagent-bench run -addr 127.0.0.1:8443 -c 8 -d 10s -sni bench.example.test
//	certagent-bench first -addr 127.0.0.1:8443 -pattern 'n%d.first.test' -names 50 -p 20 -roots root.pem
//	certagent-bench lego -directory https://127.0.0.1:14000/dir -ca-roots ca.pem -http 127.0.0.1:5002 -pattern 'l%d.test'
//
// first measures new names instead: for each, the time from its first
// ClientHello until nginx serves a certificate that verifies for it; lego
// is its baseline: the same number of orders through bare lego.
// scripts/bench-handshake and scripts/bench-first-handshake run the
// scenarios of docs/benchmarks.md with it.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/store"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "seed":
		err = seed(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	case "first":
		err = first(os.Args[2:])
	case "first-report":
		err = firstReport(os.Args[2:])
	case "timeline":
		err = timeline(os.Args[2:])
	case "peers-serve":
		err = peersServe(os.Args[2:])
	case "peers-catchup":
		err = peersCatchup(os.Args[2:])
	case "lego":
		err = legoBaseline(os.Args[2:])
	case "store":
		err = storeRecords(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "certagent-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  certagent-bench seed [flags]   make a CA and certificates: files for a static server, records in Redis
  certagent-bench run [flags]    open full TLS handshakes against nginx and report
  certagent-bench report FILE    a table of the JSON results in FILE (one a line), ratios to the first
  certagent-bench first [flags]  for each of M new names, the time from its first ClientHello to a served
                                 certificate that verifies for it (retrying after the fallback)
  certagent-bench first-report FILE   a table of first's JSON results in FILE (one a line)
  certagent-bench timeline TRACE AGENT-LOG   the stages of first's names (first -trace TRACE; the agent's
                                 log at debug level): stream, agent, order, back to the handshake
  certagent-bench peers-serve [flags]    answer the peer API of one site
  certagent-bench peers-catchup [flags]  exchange inventories with a peers-serve site until in step, and report
  certagent-bench lego [flags]   the baseline of bulk issuance: N orders at once through bare lego (acme/api)
  certagent-bench store [flags]  store full certificate records through agent/store (list, renewal and peer
                                 benchmarks)
Run either with -h for its flags.`)
	os.Exit(2)
}

// ---- seed ----

type certKey struct {
	chainPEM, keyPEM []byte
	notAfter         time.Time
}

func newCA() (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "certagent-bench CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// leafFor makes an ECDSA P-256 leaf for name signed by the CA; the chain is
// the leaf then the CA, as an ACME CA's chain has an intermediate.
func leafFor(name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, caPEM []byte) (certKey, error) {
	return leafValid(name, ca, caKey, caPEM, time.Now().Add(-time.Hour), time.Now().Add(7*24*time.Hour))
}

// leafValid is leafFor valid from notBefore to notAfter.
func leafValid(name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, caPEM []byte, notBefore, notAfter time.Time) (certKey, error) {
	key, err := newLeafKey()
	if err != nil {
		return certKey{}, err
	}
	return leafWithKey(name, ca, caKey, caPEM, key, notBefore, notAfter)
}

// leafKey is a leaf's private key and its PEM (PKCS #8).
type leafKey struct {
	key *ecdsa.PrivateKey
	pem []byte
}

func newLeafKey() (leafKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return leafKey{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return leafKey{}, err
	}
	return leafKey{key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}, nil
}

// leafWithKey is leafValid for the key given: a benchmark storing many
// certificates signs one for each name but shares a few real keys.
func leafWithKey(name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, caPEM []byte, key leafKey, notBefore, notAfter time.Time) (certKey, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return certKey{}, err
	}
	notAfter = notAfter.Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.key.PublicKey, caKey)
	if err != nil {
		return certKey{}, err
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), caPEM...)
	return certKey{chainPEM: chain, keyPEM: key.pem, notAfter: notAfter}, nil
}

func seed(args []string) error {
	fs := flag.NewFlagSet("seed", flag.ExitOnError)
	redisAddr := fs.String("redis", "127.0.0.1:6379", "Redis host:port")
	prefix := fs.String("prefix", "certagent:", "key prefix")
	count := fs.Int("names", 0, "certificates to store in Redis for the names produced by -pattern")
	pattern := fs.String("pattern", "n%d.bench.test", "name pattern (fmt, one %d)")
	single := fs.String("single", "", "one more name to store")
	staticDir := fs.String("static-dir", "", "write static.pem/static.key (for -static-name) and fallback.pem/fallback.key here")
	staticName := fs.String("static-name", "static.bench.test", "name of the static certificate")
	withDER := fs.Bool("der", true, "store the chain and key as DER too, as the agent does (false: a record of an older agent)")
	_ = fs.Parse(args)

	ca, caKey, caPEM, err := newCA()
	if err != nil {
		return err
	}
	if *staticDir != "" {
		for base, name := range map[string]string{"static": *staticName, "fallback": "fallback.bench.test"} {
			ck, err := leafFor(name, ca, caKey, caPEM)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(*staticDir, base+".pem"), ck.chainPEM, 0o644); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(*staticDir, base+".key"), ck.keyPEM, 0o600); err != nil {
				return err
			}
		}
	}
	names := make([]string, 0, *count+1)
	for i := 0; i < *count; i++ {
		names = append(names, fmt.Sprintf(*pattern, i))
	}
	if *single != "" {
		names = append(names, *single)
	}
	if len(names) == 0 {
		return nil
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
	defer rdb.Close()
	ctx := context.Background()
	const batch = 500
	for start := 0; start < len(names); start += batch {
		end := min(start+batch, len(names))
		p := rdb.Pipeline()
		for _, name := range names[start:end] {
			ck, err := leafFor(name, ca, caKey, caPEM)
			if err != nil {
				return err
			}
			// The fields nginx reads (docs/redis-schema.md); the agent writes
			// the others, which the handshake path never looks at.
			fields := []any{"fullchain", string(ck.chainPEM), "key", string(ck.keyPEM),
				"not_after", strconv.FormatInt(ck.notAfter.Unix(), 10), "names", name}
			if *withDER {
				for field, v := range store.DERRecordFields(string(ck.chainPEM), string(ck.keyPEM)) {
					fields = append(fields, field, v)
				}
			}
			p.HSet(ctx, *prefix+"cert:"+name, fields...)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("storing certificates: %w", err)
		}
	}
	fmt.Printf("stored %d certificates under %scert:<name>\n", len(names), *prefix)
	return nil
}

// ---- run ----

type result struct {
	Scenario       string  `json:"scenario"`
	Clients        int     `json:"clients"`
	Seconds        float64 `json:"seconds"`
	Handshakes     int64   `json:"handshakes"`
	Failures       int64   `json:"failures"`
	PerSecond      float64 `json:"handshakes_per_second"`
	P50ms          float64 `json:"p50_ms"`
	P99ms          float64 `json:"p99_ms"`
	Fallback       int64   `json:"fallback_served"`
	Expected       int64   `json:"expected_served"`
	ServerCPUus    float64 `json:"server_cpu_us_per_handshake,omitempty"`
	RedisCommands  float64 `json:"redis_commands_per_handshake"`
	StreamEntries  int64   `json:"stream_entries_added"`
	UniqueNames    int64   `json:"unique_names"`
	FirstFailure   string  `json:"first_failure,omitempty"`
	RedisMeasured  bool    `json:"redis_measured"`
	ServerCPUTotal float64 `json:"server_cpu_seconds"`
}

// run measures handshakes against nginx with the flags of one scenario.
// Long because its flags and the measurement they configure are one unit;
// the handshakes themselves are done elsewhere.
func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:443", "nginx TLS address")
	clients := fs.Int("c", 8, "concurrent clients (K)")
	duration := fs.Duration("d", 10*time.Second, "duration (T); with -once the bound of the run")
	sni := fs.String("sni", "", "server name of every handshake")
	pattern := fs.String("pattern", "", "name pattern (fmt, one %d) cycled over 0..-names-1")
	count := fs.Int("names", 0, "number of names for -pattern")
	once := fs.Bool("once", false, "with -pattern: each name once, then stop (the cold pass)")
	random := fs.String("random", "", "every handshake a new random name under this parent (a flood)")
	maxTLS := fs.String("tls", "", "1.2 or 1.3 to fix the version (default: the newest both speak)")
	fallbackCN := fs.String("fallback-cn", "fallback.bench.test", "common name of the fallback certificate")
	expectFallback := fs.Bool("expect-fallback", false, "count as expected the handshakes that got the fallback")
	redisAddr := fs.String("redis", "", "Redis host:port for INFO commandstats (empty: not measured)")
	stream := fs.String("stream", "certagent:requests", "requests stream whose added entries are counted")
	pids := fs.String("cpu-pids", "", "comma-separated server pids (nginx workers, redis-server) whose CPU time is measured")
	name := fs.String("scenario", "", "label of this run")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	_ = fs.Parse(args)

	next, err := nameSource(*sni, *pattern, *count, *random, *once)
	if err != nil {
		return err
	}
	cfg, err := clientTLS(*maxTLS)
	if err != nil {
		return err
	}

	ctx := context.Background()
	var rdb *redis.Client
	var cmdsBefore, addedBefore int64
	if *redisAddr != "" {
		rdb = redis.NewClient(&redis.Options{Addr: *redisAddr, MaxRetries: -1, DialTimeout: time.Second})
		defer rdb.Close()
		cmdsBefore, _ = commandCalls(ctx, rdb)
		addedBefore = entriesAdded(ctx, rdb, *stream)
	}
	pidList, err := parsePids(*pids)
	if err != nil {
		return err
	}
	cpuBefore, err := cpuSeconds(pidList)
	if err != nil {
		return err
	}

	var (
		handshakes, failures, fallback, expected atomic.Int64
		firstFailure                             atomic.Value
		mu                                       sync.Mutex
		latencies                                []time.Duration
		wg                                       sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(*duration)
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) {
				server, ok := next()
				if !ok {
					break
				}
				c := cfg.Clone()
				c.ServerName = server
				t0 := time.Now()
				cn, err := handshake(*addr, c)
				if err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s: %v", server, err))
					continue
				}
				local = append(local, time.Since(t0))
				handshakes.Add(1)
				isFallback := cn == *fallbackCN
				if isFallback {
					fallback.Add(1)
				}
				if isFallback == *expectFallback && (isFallback || cn == server) {
					expected.Add(1)
				}
			}
			mu.Lock()
			latencies = append(latencies, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpuAfter, err := cpuSeconds(pidList)
	if err != nil {
		return err
	}

	r := result{Scenario: *name, Clients: *clients, Seconds: elapsed, Handshakes: handshakes.Load(),
		Failures: failures.Load(), Fallback: fallback.Load(), Expected: expected.Load()}
	r.PerSecond = float64(r.Handshakes) / elapsed
	if f, ok := firstFailure.Load().(string); ok {
		r.FirstFailure = f
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	r.P50ms = percentile(latencies, 0.50)
	r.P99ms = percentile(latencies, 0.99)
	if len(pidList) > 0 && r.Handshakes > 0 {
		r.ServerCPUTotal = cpuAfter - cpuBefore
		r.ServerCPUus = r.ServerCPUTotal / float64(r.Handshakes) * 1e6
	}
	if *random != "" || *pattern != "" {
		r.UniqueNames = uniqueCount.Load()
	} else {
		r.UniqueNames = 1
	}
	if rdb != nil && r.Handshakes > 0 {
		if after, err := commandCalls(ctx, rdb); err == nil {
			r.RedisMeasured = true
			r.RedisCommands = float64(after-cmdsBefore) / float64(r.Handshakes)
			r.StreamEntries = entriesAdded(ctx, rdb, *stream) - addedBefore
		}
	}
	if *jsonOut {
		return json.NewEncoder(os.Stdout).Encode(r)
	}
	fmt.Printf("%-28s %8d hs %6d failed %9.0f hs/s  p50 %6.2f ms  p99 %6.2f ms  fallback %d  expected %d",
		r.Scenario, r.Handshakes, r.Failures, r.PerSecond, r.P50ms, r.P99ms, r.Fallback, r.Expected)
	if r.ServerCPUus > 0 {
		fmt.Printf("  server CPU %.0f µs/hs", r.ServerCPUus)
	}
	if r.RedisMeasured {
		fmt.Printf("  Redis %.4f cmd/hs  stream +%d", r.RedisCommands, r.StreamEntries)
	}
	fmt.Println()
	if r.FirstFailure != "" {
		fmt.Println("  first failure:", r.FirstFailure)
	}
	return nil
}

var uniqueCount atomic.Int64

// nameSource returns a function giving the server name of the next
// handshake; false ends the run.
// clientTLS is the benchmark client's configuration: every handshake a full
// one (no session resumption), at the TLS version maxTLS names ("": the
// newest both speak). Certificates are checked by the caller, if at all.
func clientTLS(maxTLS string) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: true, SessionTicketsDisabled: true}
	switch maxTLS {
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	case "":
	default:
		return nil, fmt.Errorf("-tls %q: want 1.2 or 1.3", maxTLS)
	}
	return cfg, nil
}

func nameSource(sni, pattern string, count int, random string, once bool) (func() (string, bool), error) {
	switch {
	case random != "":
		return func() (string, bool) {
			var b [8]byte
			_, _ = rand.Read(b[:])
			uniqueCount.Add(1)
			return hex.EncodeToString(b[:]) + "." + random, true
		}, nil
	case pattern != "":
		if count <= 0 {
			return nil, errors.New("-pattern needs -names")
		}
		var i atomic.Int64
		return func() (string, bool) {
			n := i.Add(1) - 1
			if once && n >= int64(count) {
				return "", false
			}
			if n < int64(count) {
				uniqueCount.Add(1)
			}
			return fmt.Sprintf(pattern, n%int64(count)), true
		}, nil
	case sni != "":
		return func() (string, bool) { return sni, true }, nil
	}
	return nil, errors.New("one of -sni, -pattern or -random is required")
}

// handshake opens a new connection, completes a full handshake and returns
// the common name of the certificate served.
func handshake(addr string, cfg *tls.Config) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		return "", err
	}
	state := tc.ConnectionState()
	if state.DidResume {
		return "", errors.New("the session was resumed")
	}
	if len(state.PeerCertificates) == 0 {
		return "", errors.New("no certificate")
	}
	return state.PeerCertificates[0].Subject.CommonName, nil
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// commandCalls sums the calls of every command in INFO commandstats except
// INFO itself (the measurement's own).
func commandCalls(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(line, "cmdstat_info:") {
			continue
		}
		i := strings.Index(line, "calls=")
		if i < 0 {
			continue
		}
		rest := line[i+len("calls="):]
		if j := strings.IndexByte(rest, ','); j >= 0 {
			rest = rest[:j]
		}
		n, err := strconv.ParseInt(rest, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("commandstats line %q: %w", line, err)
		}
		total += n
	}
	return total, nil
}

// entriesAdded returns how many entries were ever added to stream (0 when it
// does not exist).
func entriesAdded(ctx context.Context, rdb *redis.Client, stream string) int64 {
	info, err := rdb.XInfoStream(ctx, stream).Result()
	if err != nil {
		return 0
	}
	return info.EntriesAdded
}

func parsePids(s string) ([]int, error) {
	var pids []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("-cpu-pids: %q is not a pid", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// cpuSeconds sums user and system CPU time of the processes (from
// /proc/<pid>/stat, in clock ticks of 1/100 s).
func cpuSeconds(pids []int) (float64, error) {
	var total float64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("reading the CPU time of pid %d: %w", pid, err)
		}
		// The command name can hold spaces; fields count from its closing ')'.
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
		}
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		total += (utime + stime) / 100
	}
	return total, nil
}

// report prints the JSON results of FILE (one run a line) as a Markdown
// table: for each scenario (in the order of their labels) the run with the
// median rate, and the median over its runs of the rate and server CPU as
// ratios to the baseline (the first label) run just before each.
// Rounds of the same scenarios interleaved with the baseline keep the ratios
// honest on a machine whose speed drifts. Long because it is one table
// computed and printed in one pass.
func report(args []string) error {
	if len(args) != 1 {
		return errors.New("report FILE")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	runs := map[string][]result{}
	var all []*result
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		if _, ok := runs[r.Scenario]; !ok {
			order = append(order, r.Scenario)
		}
		runs[r.Scenario] = append(runs[r.Scenario], r)
		all = append(all, &r)
	}
	if len(order) == 0 {
		return errors.New("no results")
	}
	// Labels start with the scenario's letter: (a), the baseline, first.
	sort.Strings(order)
	baseLabel := order[0]
	// Each run's baseline is the baseline run just before it in the file:
	// the same round, the same state of the machine.
	perRun := map[string][][2]result{} // label: (run, its baseline) pairs
	var last *result
	for _, r := range all {
		if r.Scenario == baseLabel {
			last = r
			continue
		}
		if last != nil {
			perRun[r.Scenario] = append(perRun[r.Scenario], [2]result{*r, *last})
		}
	}
	median := func(rs []result) result {
		sorted := append([]result(nil), rs...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].PerSecond < sorted[j].PerSecond })
		return sorted[len(sorted)/2]
	}
	base := median(runs[order[0]])
	fmt.Println("| scenario | runs | hs/s (median run) | ratio to (a) (median of rounds) | ratio to (a) per round | p50 ms | p99 ms | failed | served as expected | server CPU µs/hs | CPU ratio to (a) (median of rounds) | Redis cmd/hs | stream entries added | unique names |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, label := range order {
		r := median(runs[label])
		var failed int64
		for _, x := range runs[label] {
			failed += x.Failures
		}
		redisCmds, entries := "Redis down", "-"
		if r.RedisMeasured {
			redisCmds = fmt.Sprintf("%.4f", r.RedisCommands)
			entries = strconv.FormatInt(r.StreamEntries, 10)
		}
		pairs := perRun[label]
		var perRound []string
		for _, p := range pairs {
			perRound = append(perRound, fmt.Sprintf("%.2f", p[0].PerSecond/p[1].PerSecond))
		}
		rounds := strings.Join(perRound, ", ")
		ratio := r.PerSecond / base.PerSecond
		cpuRatio := "-"
		if label == baseLabel {
			rounds, ratio = "-", 1
			cpuRatio = "1.00"
		} else if len(pairs) > 0 {
			ratio = medianOf(pairs, func(x result) float64 { return x.PerSecond })
			if c := medianOf(pairs, func(x result) float64 { return x.ServerCPUus }); c > 0 {
				cpuRatio = fmt.Sprintf("%.2f", c)
			}
		} else {
			rounds = "-"
			if base.ServerCPUus > 0 && r.ServerCPUus > 0 {
				cpuRatio = fmt.Sprintf("%.2f", r.ServerCPUus/base.ServerCPUus)
			}
		}
		fmt.Printf("| %s | %d | %.0f | %.2f | %s | %.2f | %.2f | %d | %d of %d | %.0f | %s | %s | %s | %d |\n",
			label, len(runs[label]), r.PerSecond, ratio, rounds, r.P50ms, r.P99ms, failed,
			r.Expected, r.Handshakes, r.ServerCPUus, cpuRatio, redisCmds, entries, r.UniqueNames)
	}
	return nil
}

// medianOf returns the median over (run, baseline) pairs of value(run) /
// value(baseline).
func medianOf(pairs [][2]result, value func(result) float64) float64 {
	ratios := make([]float64, 0, len(pairs))
	for _, p := range pairs {
		if b := value(p[1]); b > 0 && value(p[0]) > 0 {
			ratios = append(ratios, value(p[0])/b)
		}
	}
	if len(ratios) == 0 {
		return 0
	}
	sort.Float64s(ratios)
	if len(ratios)%2 == 1 {
		return ratios[len(ratios)/2]
	}
	return (ratios[len(ratios)/2-1] + ratios[len(ratios)/2]) / 2
}
