package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// envInt reads a benchmark's size from the environment.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		b.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// BenchmarkDueRenewals stores CERTAGENT_BENCH_RENEWALS certificates (10,000)
// that are due for renewal (a ninth of their lifetime left, no CA window),
// then runs one `certagent run` with --renew-concurrency 2 (what renewals
// always ran at before the flag), then, on a new store, with the flag's
// default, each against its own Pebble that validates every challenge
// (PEBBLE_VA_ALWAYS_VALID), behind the CA proxy that keeps Pebble's lock
// cycle from hanging it (testenv.CAProxy.GuardPebbleLockCycle), and reports renewals per second and the agent's
// peak RSS for each (docs/benchmarks.md). Not a test: run it with
//
//	go test -run '^$' -bench BenchmarkDueRenewals -benchtime 1x ./agent/e2e/
func BenchmarkDueRenewals(b *testing.B) {
	count := envInt(b, "CERTAGENT_BENCH_RENEWALS", 10000)
	agent := testenv.BuildBinary(b, "./agent/cmd/certagent")
	for _, conc := range []string{"2", ""} {
		label := "concurrency=" + conc
		if conc == "" {
			label = "concurrency=default"
		}
		b.Run(label, func(b *testing.B) {
			for range b.N {
				rate, rss := dueRenewals(b, agent, count, conc)
				b.ReportMetric(rate, "renewals/s")
				b.ReportMetric(float64(rss)/1024, "peak-RSS-MB")
			}
		})
	}
}

func dueRenewals(b *testing.B, agent string, count int, conc string) (rate float64, rssKB int64) {
	r := testenv.StartRedis(b)
	pebble := testenv.StartPebble(b, testenv.PebbleOptions{HTTPPort: testenv.FreePort(b),
		ValidityPeriod: 90 * 24 * time.Hour, Env: map[string]string{"PEBBLE_VA_ALWAYS_VALID": "1"}})
	// Through the CA proxy, which keeps Pebble's lock cycle from hanging it
	// for good at 8 renewals at once (testenv.CAProxy.GuardPebbleLockCycle).
	proxy := testenv.StartCAProxy(b, pebble)
	proxy.GuardPebbleLockCycle()
	st := store.New(r.Client, store.Keys{})
	storeDue(b, st, count)

	args := []string{"run", "--consumer", "bench", "--allow", "*.renew.bench.test", "--log-level", "warn"}
	if conc != "" {
		args = append(args, "--renew-concurrency", conc)
	}
	cmd := exec.Command(agent, args...)
	cmd.Env = append(os.Environ(), "CERTAGENT_REDIS_URL="+r.URL, "CERTAGENT_ACME_DIRECTORY="+proxy.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+proxy.CARootsFile, "CERTAGENT_EMAIL=ops@example.test")
	logPath := filepath.Join(b.TempDir(), "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	b.ResetTimer()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ctx := context.Background()
	var last int64
	lastAt := start
	for {
		// A renewed certificate is looked at again in hours (Pebble's
		// Retry-After for its renewal window) or months; one not yet looked
		// at is due now, one being renewed is claimed for minutes.
		done, err := r.Client.ZCount(ctx, store.Keys{}.Renewals(), strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10), "+inf").Result()
		if err != nil {
			b.Fatal(err)
		}
		if done == int64(count) {
			break
		}
		// Progress is any certificate written (a renewal is hours ahead
		// only once its CA window was read, after all the others).
		written, err := r.Client.XInfoStream(ctx, store.Keys{}.Changes()).Result()
		if err != nil {
			b.Fatal(err)
		}
		if progress := done + written.EntriesAdded; progress > last {
			last, lastAt = progress, time.Now()
		}
		if stalled := time.Since(lastAt) > 3*time.Minute; stalled || time.Since(start) > 30*time.Minute {
			out, _ := os.ReadFile(logPath)
			b.Fatalf("%d of %d renewed after %s (nothing written in the last %s); agent log tail:\n%s", done, count,
				time.Since(start).Round(time.Second), time.Since(lastAt).Round(time.Second), tail(string(out), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	b.StopTimer()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			rssKB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	b.Logf("%d renewals with --renew-concurrency %q in %.1f s", count, conc, took.Seconds())
	return float64(count) / took.Seconds(), rssKB
}

// storeDue stores count certificates of their own, 80 of their 90 days
// gone, written by 8 writers at once.
func storeDue(b *testing.B, st *store.Store, count int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(count); i = next.Add(1) - 1 {
				name := fmt.Sprintf("r%d.renew.bench.test", i)
				c := testenv.NewCert(b, testenv.CertSpec{CommonName: name, DNSNames: []string{name},
					NotBefore: time.Now().Add(-80 * 24 * time.Hour), NotAfter: time.Now().Add(10 * 24 * time.Hour)})
				rec, err := store.NewCertRecord(c.CertPEM, c.KeyPEM, name)
				if err == nil {
					rec.KeyType, rec.IssuedAt = "ec256", time.Now()
					err = st.PutCert(context.Background(), rec)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}
