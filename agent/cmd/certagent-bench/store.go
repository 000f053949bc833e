package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/store"
)

// storeRecords writes full certificate records through agent/store, as the
// agent does (the copies, the expiry index, the renewal schedule), for the
// benchmarks of list and of renewals: names -from to -from+-names-1 of
// -pattern. Without -unique the records share one certificate (a listing
// reads no chain); with it each name gets its own, with -lifetime and
// -left, so that renewals see real certificates.
func storeRecords(args []string) error {
	fs := flag.NewFlagSet("store", flag.ExitOnError)
	redisAddr := fs.String("redis", "127.0.0.1:6379", "Redis host:port")
	prefix := fs.String("prefix", "certagent:", "key prefix")
	count := fs.Int("names", 0, "records to store")
	from := fs.Int("from", 0, "number of the first name")
	pattern := fs.String("pattern", "c%d.scale.bench.test", "name pattern (fmt, one %d)")
	workers := fs.Int("workers", 8, "writes at once")
	unique := fs.Bool("unique", false, "a certificate of its own for each name (slower)")
	lifetime := fs.Duration("lifetime", 90*24*time.Hour, "with -unique: the certificates' lifetime")
	left := fs.Duration("left", 60*24*time.Hour, "with -unique: the time they have left")
	_ = fs.Parse(args)

	ca, caKey, caPEM, err := newCA()
	if err != nil {
		return err
	}
	shared, err := leafFor("shared.scale.bench.test", ca, caKey, caPEM)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, PoolSize: *workers})
	defer rdb.Close()
	st := store.New(rdb, store.Keys{Prefix: *prefix})
	ctx := context.Background()
	start := time.Now()
	var next atomic.Int64
	next.Store(int64(*from))
	var wg sync.WaitGroup
	errs := make(chan error, *workers)
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *from+*count {
					return
				}
				name := fmt.Sprintf(*pattern, i)
				ck := shared
				var err error
				if *unique {
					if ck, err = leafLiving(name, ca, caKey, caPEM, *lifetime, *left); err != nil {
						errs <- err
						return
					}
				}
				rec, err := store.NewCertRecord(ck.chainPEM, ck.keyPEM, "")
				if err != nil {
					errs <- err
					return
				}
				rec.Names = []string{name}
				if !*unique {
					// Spread over a year, so that the index is ordered by more
					// than the name.
					rec.NotAfter = rec.NotAfter.Add(time.Duration(i%525600) * time.Minute)
				}
				rec.KeyType, rec.CA, rec.IssuedAt = "ec256", "https://ca.bench.test/dir", time.Now()
				if err := st.PutCert(ctx, rec); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(<-errs); err != nil {
		return err
	}
	fmt.Printf("stored %d records in %.1f s\n", *count, time.Since(start).Seconds())
	return nil
}

// leafLiving is leafFor with a lifetime of which left remains.
func leafLiving(name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, caPEM []byte, lifetime, left time.Duration) (certKey, error) {
	return leafValid(name, ca, caKey, caPEM, time.Now().Add(left-lifetime), time.Now().Add(left))
}
