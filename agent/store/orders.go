package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// OrderRecordTTL bounds how long a running order is remembered: an order cut
// off by a crash is taken up within a lease or two, and one nobody took up
// for a day is not worth resuming (its authorizations are reused by a new
// order at CAs that keep them).
const OrderRecordTTL = 24 * time.Hour

// OrderRecord is the ACME order running for a name, kept beside the name's
// lease so that the agent that takes the name over after a crash resumes it
// instead of placing a second order at the CA.
type OrderRecord struct {
	CA    string   // directory URL of the CA the order was placed with
	URL   string   // the order's URL at the CA
	Names []string // the names ordered, primary first
	// KeyType and KeyPEM are the new certificate's key, recorded before the
	// order is finalized with a CSR for it (empty until then): a resumed
	// order that the CA is issuing or has issued is of use only with it.
	KeyType string
	KeyPEM  string
	// Expires is when the CA lets the order expire (zero when it did not say).
	Expires time.Time
}

var (
	// Only the holder of the lease records or forgets the name's order, so
	// an agent whose lease ran out cannot replace its successor's order.
	recordOrderScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call("DEL", KEYS[2])
redis.call("HSET", KEYS[2], unpack(ARGV, 3))
redis.call("PEXPIRE", KEYS[2], ARGV[2])
return 1`)
	forgetOrderScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call("DEL", KEYS[2])
return 1`)
)

// RecordOrder stores rec as the running order of the lock's name, replacing
// any other, for as long as the order lives (at most OrderRecordTTL). It
// returns an error wrapping ErrLockLost when the caller no longer holds the
// lease.
func (l *Lock) RecordOrder(ctx context.Context, rec *OrderRecord) error {
	l.orderRead.Store(nil)
	ttl := OrderRecordTTL
	if !rec.Expires.IsZero() {
		ttl = min(ttl, time.Until(rec.Expires))
	}
	if ttl <= 0 {
		return l.ForgetOrder(ctx)
	}
	var expires string
	if !rec.Expires.IsZero() {
		expires = strconv.FormatInt(rec.Expires.Unix(), 10)
	}
	n, err := recordOrderScript.Run(ctx, l.store.rdb, []string{l.store.keys.Lock(l.name), l.store.keys.Order(l.name)},
		l.owner, ttl.Milliseconds(),
		"ca", rec.CA, "url", rec.URL, "names", strings.Join(rec.Names, " "),
		"key_type", rec.KeyType, "key", rec.KeyPEM, "expires", expires).Int()
	if err != nil {
		return fmt.Errorf("recording the order for %s: %w", l.name, err)
	}
	if n == 0 {
		return fmt.Errorf("recording the order for %s: %w", l.name, ErrLockLost)
	}
	return nil
}

// ForgetOrder removes the running order of the lock's name once it is done
// (its certificate stored) or dead (invalid at the CA). It does nothing when
// the caller no longer holds the lease: the order is then its successor's.
func (l *Lock) ForgetOrder(ctx context.Context) error {
	l.orderRead.Store(nil)
	err := forgetOrderScript.Run(ctx, l.store.rdb, []string{l.store.keys.Lock(l.name), l.store.keys.Order(l.name)}, l.owner).Err()
	if err != nil {
		return fmt.Errorf("forgetting the order for %s: %w", l.name, err)
	}
	return nil
}

// RunningOrder returns the order recorded for the lock's name, by this
// holder or by an earlier one that did not finish it. It returns an error
// wrapping ErrNotFound when none is recorded, ErrCorrupt when the record is
// unusable. Its first call after AcquireLock answers from the record read
// with the lease, unless the holder wrote the record since.
func (l *Lock) RunningOrder(ctx context.Context) (*OrderRecord, error) {
	if read := l.orderRead.Swap(nil); read != nil {
		return read.rec, read.err
	}
	return l.store.RunningOrder(ctx, l.name)
}

// RereadOrder makes the next RunningOrder read the record from Redis, not
// answer from the read taken with the lease: the holder did something long
// since (asked the peer sites), during which its lease may have run out and
// the agent that took the name over recorded its own order.
func (l *Lock) RereadOrder() { l.orderRead.Store(nil) }

// RunningOrder returns the order recorded for name (see Lock.RunningOrder).
func (s *Store) RunningOrder(ctx context.Context, name string) (*OrderRecord, error) {
	f, err := s.rdb.HGetAll(ctx, s.keys.Order(name)).Result()
	return orderFromFields(name, f, err)
}

// orderFromFields decodes the order record of name read as f (with the
// read's error).
func orderFromFields(name string, f map[string]string, err error) (*OrderRecord, error) {
	if err != nil {
		return nil, fmt.Errorf("reading the running order for %s: %w", name, err)
	}
	if len(f) == 0 {
		return nil, fmt.Errorf("running order for %s: %w", name, ErrNotFound)
	}
	rec := &OrderRecord{CA: f["ca"], URL: f["url"], Names: strings.Fields(f["names"]), KeyType: f["key_type"], KeyPEM: f["key"]}
	if f["expires"] != "" {
		sec, err := strconv.ParseInt(f["expires"], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("running order for %s: expires %q: %w", name, f["expires"], ErrCorrupt)
		}
		rec.Expires = time.Unix(sec, 0)
	}
	if rec.CA == "" || rec.URL == "" || len(rec.Names) == 0 {
		return nil, fmt.Errorf("running order for %s: no CA, URL or names: %w", name, ErrCorrupt)
	}
	if (rec.KeyPEM == "") != (rec.KeyType == "") {
		return nil, fmt.Errorf("running order for %s: a key without its type or a type without a key: %w", name, ErrCorrupt)
	}
	return rec, nil
}
