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

// storeOptions are the flags of store.
type storeOptions struct {
	count, from, workers, batch, keys int
	pattern                           string
	unique                            bool
	lifetime, left, spread            time.Duration
}

// storeRecords writes full certificate records through agent/store, as the
// agent does (the copies, the expiry index, the renewal schedule, the
// changes stream), for the benchmarks of list, of renewals and of peer
// sites: names -from to -from+-names-1 of -pattern, -batch records per
// MULTI, -workers batches made and written at once. Without -unique the
// records share one certificate (a listing reads no chain); with it each
// name gets its own, signed by one CA for that name, with -lifetime and
// -left (less one day per name number modulo the days of -spread), so that
// renewals and peer sites see real certificates. Their keys are -keys real
// EC P-256 keys, shared: a site receiving them checks that each key is its
// certificate's, and a million keys would take most of the time.
func storeRecords(args []string) error {
	fs := flag.NewFlagSet("store", flag.ExitOnError)
	redisAddr := fs.String("redis", "127.0.0.1:6379", "Redis host:port")
	prefix := fs.String("prefix", "certagent:", "key prefix (the agent's --redis-prefix)")
	var o storeOptions
	fs.IntVar(&o.count, "names", 0, "records to store")
	fs.IntVar(&o.from, "from", 0, "number of the first name")
	fs.StringVar(&o.pattern, "pattern", "c%d.scale.bench.test", "name pattern (fmt, one %d)")
	fs.IntVar(&o.workers, "workers", 4, "batches made and written at once")
	fs.IntVar(&o.batch, "batch", 200, "records per write (one MULTI)")
	fs.BoolVar(&o.unique, "unique", false, "a certificate of its own for each name")
	fs.DurationVar(&o.lifetime, "lifetime", 90*24*time.Hour, "with -unique: the certificates' lifetime")
	fs.DurationVar(&o.left, "left", 60*24*time.Hour, "with -unique: the time they have left")
	fs.DurationVar(&o.spread, "spread", 0, "with -unique: spread the not-afters over this much before -left, a day apart")
	fs.IntVar(&o.keys, "keys", 64, "with -unique: real keys the certificates share")
	_ = fs.Parse(args)
	if o.batch < 1 || o.batch > store.MaxCertBatch || o.workers < 1 || o.keys < 1 {
		return fmt.Errorf("-batch must be 1 to %d, -workers and -keys at least 1", store.MaxCertBatch)
	}
	mk, err := newRecordMaker(o)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, PoolSize: o.workers})
	defer rdb.Close()
	st := store.New(rdb, store.Keys{Prefix: *prefix})
	start := time.Now()
	if err := storeBatches(context.Background(), st, mk, o); err != nil {
		return err
	}
	fmt.Printf("stored %d records in %.1f s\n", o.count, time.Since(start).Seconds())
	return nil
}

// storeBatches has o.workers workers make and write the records, a batch at
// a time, until every name is stored or one fails.
func storeBatches(ctx context.Context, st *store.Store, mk *recordMaker, o storeOptions) error {
	var next atomic.Int64
	next.Store(int64(o.from))
	end := int64(o.from + o.count)
	var wg sync.WaitGroup
	errs := make([]error, o.workers)
	for w := range o.workers {
		wg.Go(func() {
			for {
				first := next.Add(int64(o.batch)) - int64(o.batch)
				if first >= end {
					return
				}
				recs, err := mk.records(int(first), int(min(first+int64(o.batch), end)))
				if err == nil {
					err = st.PutCerts(ctx, recs)
				}
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// recordMaker makes the records of names by number.
type recordMaker struct {
	o      storeOptions
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
	shared certKey   // without -unique
	keys   []leafKey // with -unique
	now    time.Time
}

func newRecordMaker(o storeOptions) (*recordMaker, error) {
	ca, caKey, caPEM, err := newCA()
	if err != nil {
		return nil, err
	}
	mk := &recordMaker{o: o, ca: ca, caKey: caKey, caPEM: caPEM, now: time.Now()}
	if !o.unique {
		mk.shared, err = leafFor("shared.scale.bench.test", ca, caKey, caPEM)
		return mk, err
	}
	for range o.keys {
		key, err := newLeafKey()
		if err != nil {
			return nil, err
		}
		mk.keys = append(mk.keys, key)
	}
	return mk, nil
}

// records makes the records of names from to end-1.
func (mk *recordMaker) records(from, end int) ([]*store.CertRecord, error) {
	recs := make([]*store.CertRecord, 0, end-from)
	for i := from; i < end; i++ {
		rec, err := mk.record(i)
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

func (mk *recordMaker) record(i int) (*store.CertRecord, error) {
	name := fmt.Sprintf(mk.o.pattern, i)
	ck := mk.shared
	if mk.o.unique {
		left := mk.o.left
		if days := int(mk.o.spread / (24 * time.Hour)); days > 0 {
			left -= time.Duration(i%days) * 24 * time.Hour
		}
		var err error
		ck, err = leafWithKey(name, mk.ca, mk.caKey, mk.caPEM, mk.keys[i%len(mk.keys)],
			mk.now.Add(left-mk.o.lifetime), mk.now.Add(left))
		if err != nil {
			return nil, err
		}
	}
	rec, err := store.NewCertRecord(ck.chainPEM, ck.keyPEM, "")
	if err != nil {
		return nil, err
	}
	rec.Names = []string{name}
	if !mk.o.unique {
		// Spread over a year, so that the index is ordered by more than
		// the name.
		rec.NotAfter = rec.NotAfter.Add(time.Duration(i%525600) * time.Minute)
	}
	rec.KeyType, rec.CA, rec.IssuedAt = "ec256", "https://ca.bench.test/dir", mk.now
	return rec, nil
}
