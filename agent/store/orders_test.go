package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestRunningOrderIsKeptWithTheLease(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const name = "a.example.com"
	lock, err := st.AcquireLock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.RunningOrder(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no order recorded: %v, want ErrNotFound", err)
	}
	want := &OrderRecord{CA: "https://ca/dir", URL: "https://ca/order/1", Names: []string{name, "b.example.com"},
		Expires: time.Now().Add(time.Hour).Truncate(time.Second)}
	if err := lock.RecordOrder(ctx, want); err != nil {
		t.Fatal(err)
	}
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	key, err := doc["order"].Key("t:", "name", name)
	if err != nil {
		t.Fatal(err)
	}
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["order"].Type {
		t.Errorf("%s is a %s, the document says %s", key, typ, doc["order"].Type)
	}
	// It lives as long as the order, not the lease.
	if ttl := r.Client.PTTL(ctx, key).Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("record TTL %s, want the order's hour", ttl)
	}

	// The key is added before finalization; another agent reads it all.
	want.KeyType, want.KeyPEM = "ec256", "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"
	if err := lock.RecordOrder(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := st.RunningOrder(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if got.CA != want.CA || got.URL != want.URL || !slices.Equal(got.Names, want.Names) || got.KeyType != want.KeyType ||
		got.KeyPEM != want.KeyPEM || !got.Expires.Equal(want.Expires) {
		t.Errorf("read back %+v, want %+v", got, want)
	}

	// Only the holder of the lease records or forgets: the lease ran out and
	// another agent took the name.
	r.Client.Del(ctx, st.keys.Lock(name))
	newer, err := st.AcquireLock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.RecordOrder(ctx, &OrderRecord{CA: "https://ca/dir", URL: "https://ca/order/2", Names: []string{name}}); !errors.Is(err, ErrLockLost) {
		t.Errorf("recording without the lease: %v, want ErrLockLost", err)
	}
	if err := lock.ForgetOrder(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := newer.RunningOrder(ctx); err != nil || got.URL != want.URL {
		t.Fatalf("the new holder reads %+v, %v: want the order the first holder left", got, err)
	}

	// Storing the certificate under the lease ends the order with it.
	if err := newer.PutCert(ctx, fencedRecord(t, name)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RunningOrder(ctx, name); !errors.Is(err, ErrNotFound) {
		t.Errorf("order after the certificate was stored: %v, want ErrNotFound", err)
	}

	// A record without its URL is corrupt, not an order.
	r.Client.HSet(ctx, key, "ca", "https://ca/dir", "names", name)
	if _, err := st.RunningOrder(ctx, name); !errors.Is(err, ErrCorrupt) {
		t.Errorf("record without a URL: %v, want ErrCorrupt", err)
	}
}
