package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// BenchmarkInventoryDigests measures what one side of an inventory exchange
// between sites in step reads: the window digests of the whole expiry
// index, with 100,000 and 1,000,000 certificates whose not-afters spread
// over 90 days (the digests read the index and each record's fingerprint,
// so only those are written). Numbers are in docs/benchmarks.md.
func BenchmarkInventoryDigests(b *testing.B) {
	r := testenv.StartRedis(b)
	now := time.Now()
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			st := New(r.Client, Keys{Prefix: "b" + strconv.Itoa(n) + ":"})
			ctx := context.Background()
			seedIndex(b, st, now, n)
			for b.Loop() {
				windows, err := st.InventoryDigests(ctx, now.Unix(), 0, 1<<20)
				if err != nil || len(windows) == 0 {
					b.Fatal(len(windows), err)
				}
			}
		})
	}
}

// seedIndex writes n entries of the expiry index from now over 90 days, each
// with a record holding only its fingerprint.
func seedIndex(b *testing.B, st *Store, now time.Time, n int) {
	ctx := context.Background()
	const batch = 5000
	for start := 0; start < n; start += batch {
		_, err := st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			zs := make([]redis.Z, 0, batch)
			for i := start; i < min(start+batch, n); i++ {
				at := now.Add(time.Duration(i) * (90 * 24 * time.Hour / time.Duration(n)))
				name := "host-" + strconv.Itoa(i) + ".example.com"
				zs = append(zs, redis.Z{Score: float64(at.Unix()), Member: name})
				sum := sha256.Sum256([]byte(name))
				p.HSet(ctx, st.keys.Cert(name), "fingerprint", hex.EncodeToString(sum[:]))
			}
			p.ZAdd(ctx, st.keys.Expiry(), zs...)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
