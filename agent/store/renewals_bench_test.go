package store

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// fillSynthetic writes n certificate records (one real chain and key, shared,
// under n names) with their expiry index and renewal schedule entries, due
// of them scheduled before now and the rest spread over the next 60 days.
// It writes through pipelines: PutCert's one transaction per certificate
// would make the set-up, not the measured read, dominate.
func fillSynthetic(tb testing.TB, st *Store, n, due int, now time.Time) {
	tb.Helper()
	// A wildcard: the record is valid (it covers) under every name.
	c := testenv.NewCert(tb, testenv.CertSpec{CommonName: "synthetic.example.com", DNSNames: []string{"*.example.com"},
		NotAfter: now.Add(90 * 24 * time.Hour)})
	rec, err := NewCertRecord(c.CertPEM, c.KeyPEM, "synthetic.example.com")
	if err != nil {
		tb.Fatal(err)
	}
	rec.KeyType, rec.CA, rec.IssuedAt = "ec256", "https://ca/dir", now
	fields := rec.fields()
	ctx := context.Background()
	const batch = 2000
	for start := 0; start < n; start += batch {
		_, err := st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := start; i < min(start+batch, n); i++ {
				name := "host-" + strconv.Itoa(i) + ".example.com"
				p.HSet(ctx, st.keys.Cert(name), fields)
				var at time.Time
				if i < due {
					at = now.Add(-time.Duration(i+1) * time.Second)
				} else {
					at = now.Add(time.Hour + (60*24*time.Hour/time.Duration(n))*time.Duration(i))
				}
				p.ZAdd(ctx, st.keys.Expiry(), redis.Z{Score: float64(at.Add(30 * 24 * time.Hour).Unix()), Member: name})
				p.ZAdd(ctx, st.keys.Renewals(), redis.Z{Score: float64(at.Unix()), Member: name})
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkRenewalDue measures what a scheduler pass reads from the schedule
// with 100,000 certificates stored: every due name (1,000 of them), and one
// batch of 100 as `run` takes it. Numbers are in docs/benchmarks.md.
func BenchmarkRenewalDue(b *testing.B) {
	st := New(testenv.StartRedis(b).Client, Keys{Prefix: "b:"})
	now := time.Now()
	const total, due = 100_000, 1_000
	fillSynthetic(b, st, total, due, now)
	ctx := context.Background()
	for _, limit := range []int64{0, 100} {
		b.Run(fmt.Sprintf("records=%d/due=%d/limit=%d", total, due, limit), func(b *testing.B) {
			want := due
			if limit > 0 {
				want = int(limit)
			}
			for b.Loop() {
				got, err := st.RenewalDue(ctx, now, limit)
				if err != nil || len(got) != want {
					b.Fatalf("%d due, %v; want %d", len(got), err, want)
				}
			}
		})
	}
	b.Run(fmt.Sprintf("records=%d/due=%d/with-records", total, due), func(b *testing.B) {
		// The due names and their records, as a pass reads them.
		for b.Loop() {
			got, err := st.RenewalDue(ctx, now, 0)
			if err != nil {
				b.Fatal(err)
			}
			names := make([]string, len(got))
			for i, e := range got {
				names[i] = e.Name
			}
			if _, _, err := st.GetCerts(ctx, names); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkScheduleMissing measures the one-time fill of the schedule from
// the expiry index at a scheduler's start, with 100,000 certificates of which
// none needs adding (the usual case once the schedule exists).
func BenchmarkScheduleMissing(b *testing.B) {
	st := New(testenv.StartRedis(b).Client, Keys{Prefix: "b:"})
	now := time.Now()
	fillSynthetic(b, st, 100_000, 0, now)
	ctx := context.Background()
	for b.Loop() {
		if n, err := st.ScheduleMissing(ctx, now); err != nil || n != 0 {
			b.Fatalf("added %d, %v", n, err)
		}
	}
}
