package nginxtest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// BenchmarkNameIndexMillion stores CERTAGENT_BENCH_NAMES record names
// (1,000,000) with pipelined writes, starts nginx with the shipped dicts
// (names_dict 8 MB), and reports how long the name index took to build
// after nginx started, the bytes of the dict it uses, and a flood of
// CERTAGENT_BENCH_FLOOD (2,000) random names one after the other: the
// Redis lookups (HMGET) it cost per name and its handshakes per second.
// CERTAGENT_BENCH_BASE_LUA names a directory holding another
// certagent/index.lua (the baseline's) to load instead. Not a test: run
// it with
//
//	go test -run '^$' -bench BenchmarkNameIndexMillion -benchtime 1x ./agent/nginxtest/
func BenchmarkNameIndexMillion(b *testing.B) {
	names, flood := benchEnv(b, "CERTAGENT_BENCH_NAMES", 1_000_000), benchEnv(b, "CERTAGENT_BENCH_FLOOD", 2000)
	for range b.N {
		e := startSeeded(b, testenv.NginxOptions{
			LuaConfig:     map[string]string{"index_threshold": "5", "first_handshake_wait": "0"},
			LuaPathPrefix: os.Getenv("CERTAGENT_BENCH_BASE_LUA"),
		}, func(e *env) { e.seedNames("m", names) })
		start := time.Now()
		built := time.Duration(0)
		for deadline := start.Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if e.stats().indexReady {
				built = time.Since(start)
				break
			}
		}
		if built == 0 {
			b.Logf("the index is not in use 3 minutes after the start")
		}
		st := e.stats()
		floodStart := time.Now()
		lookups := e.floodRedisLookups(flood)
		rate := float64(flood) / time.Since(floodStart).Seconds()
		b.ReportMetric(built.Seconds(), "build-s")
		b.ReportMetric(float64(st.namesDictUsed)/(1<<20), "dict-MB")
		b.ReportMetric(float64(lookups)/float64(flood), "HMGET/flood-name")
		b.ReportMetric(rate, "flood-handshakes/s")
		b.Logf("%d names: index ready %v after the start (%d names in the last build), dict %d bytes in use; "+
			"%d flood names cost %d HMGETs, %.0f handshakes/s; error lines: %q",
			names, built, st.indexNames, st.namesDictUsed, flood, lookups, rate, e.errorLines(0))
	}
}

func benchEnv(b *testing.B, name string, def int) int {
	b.Helper()
	if v := os.Getenv(name); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil {
			b.Fatalf("%s=%q: %v", name, v, err)
		}
		return n
	}
	return def
}
