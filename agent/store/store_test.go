package store

import (
	"context"
	"encoding/pem"
	"errors"
	"hash/crc32"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

func newStore(t *testing.T) (*Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	return New(r.Client, Keys{Prefix: "t:"}), r
}

// leafPEM makes a self-signed certificate and key for names.
func leafPEM(t *testing.T, notAfter time.Time, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	c := testenv.NewCert(t, testenv.CertSpec{CommonName: names[0], DNSNames: names,
		NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter})
	return c.CertPEM, c.KeyPEM
}

func TestCertRecordRoundTripAndSchema(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	notAfter := time.Now().Add(60 * 24 * time.Hour).Truncate(time.Second)
	chain, key := leafPEM(t, notAfter, "b.example.com", "a.example.com")
	rec, err := NewCertRecord(chain, key, "a.example.com")
	if err != nil {
		t.Fatal(err)
	}
	rec.KeyType, rec.CA, rec.CertURL, rec.IssuedAt = "ec256", "https://ca/dir", "https://ca/cert/1", time.Now()
	if got := strings.Join(rec.Names, ","); got != "a.example.com,b.example.com" {
		t.Fatalf("names %q: want the primary first", got)
	}
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}

	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.example.com", "b.example.com"} {
		got, err := st.GetCert(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got.FullChain != string(chain) || got.Key != string(key) || !got.NotAfter.Equal(notAfter) ||
			got.Fingerprint != rec.Fingerprint || got.Primary() != "a.example.com" || got.CertURL != rec.CertURL {
			t.Errorf("%s: stored record differs: %+v", name, got)
		}
		// The key and its type are those of the document.
		docKey, _ := doc["cert"].Key("t:", "name", name)
		if typ := r.Client.Type(ctx, docKey).Val(); typ != doc["cert"].Type {
			t.Errorf("%s is a %s, the document says %s", docKey, typ, doc["cert"].Type)
		}
		// nginx reads exactly these fields.
		vals := r.Client.HMGet(ctx, docKey, "fullchain", "key", "not_after", "chain_der", "key_der", "der_crc32").Val()
		if vals[0] != string(chain) || vals[1] != string(key) || vals[2] != strconv.FormatInt(notAfter.Unix(), 10) {
			t.Errorf("%s: HMGET fullchain key not_after = %v", docKey, vals[:3])
		}
		// The same chain and key as DER: the certificates in a row, the
		// key as PKCS #8.
		chainBlock, _ := pem.Decode(chain)
		keyBlock, _ := pem.Decode(key)
		if vals[3] != string(chainBlock.Bytes) || vals[4] != string(keyBlock.Bytes) || keyBlock.Type != "PRIVATE KEY" {
			t.Errorf("%s: chain_der and key_der are not the DER of fullchain and key", docKey)
		}
		// Their CRC-32, which nginx computes again (ngx.crc32_long) to
		// use the DER only for the PEM it was made from.
		if want := strconv.FormatUint(uint64(crc32.ChecksumIEEE(append(append([]byte{}, chain...), key...))), 10); vals[5] != want {
			t.Errorf("%s: der_crc32 = %v, want %s", docKey, vals[5], want)
		}
	}
	expiryKey, _ := doc["expiry"].Key("t:")
	if typ := r.Client.Type(ctx, expiryKey).Val(); typ != doc["expiry"].Type {
		t.Errorf("%s is a %s, the document says %s", expiryKey, typ, doc["expiry"].Type)
	}
	entries, err := st.ListExpiring(ctx, notAfter, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name != "a.example.com" || !entries[0].NotAfter.Equal(notAfter) {
		t.Errorf("expiry index %+v: want only the primary name at its not-after", entries)
	}
	if entries, _ := st.ListExpiring(ctx, notAfter.Add(-time.Second), 0); len(entries) != 0 {
		t.Errorf("nothing expires before %s, got %+v", notAfter, entries)
	}

	if _, err := st.GetCert(ctx, "missing.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing record: %v, want ErrNotFound", err)
	}
	r.Client.HSet(ctx, "t:cert:corrupt.example.com", "fullchain", "x", "not_after", "soon")
	if _, err := st.GetCert(ctx, "corrupt.example.com"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt record: %v, want ErrCorrupt", err)
	}
	recs, errs, err := st.GetCerts(ctx, []string{"b.example.com", "missing.example.com", "corrupt.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if recs[0] == nil || !errors.Is(errs[1], ErrNotFound) || !errors.Is(errs[2], ErrCorrupt) {
		t.Errorf("GetCerts: %v %v", recs, errs)
	}
}

func TestNewCertRecordRejectsGarbage(t *testing.T) {
	if _, err := NewCertRecord([]byte("not pem"), nil, "a.example.com"); err == nil {
		t.Error("want an error for a chain that is not PEM")
	}
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})
	if _, err := NewCertRecord(bad, nil, "a.example.com"); err == nil {
		t.Error("want an error for a certificate that does not parse")
	}
}

func TestTokenHasTheDocumentedTTL(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	if err := st.PutToken(ctx, "a.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatal(err)
	}
	doc, _ := schemadoc.Load()
	key, _ := doc["token"].Key("t:", "name", "a.example.com", "token", "tok")
	if v := r.Client.Get(ctx, key).Val(); v != "tok.thumb" {
		t.Errorf("%s = %q", key, v)
	}
	ttl := r.Client.TTL(ctx, key).Val()
	if ttl <= 590*time.Second || ttl > 600*time.Second || doc["token"].TTL != "600 s" {
		t.Errorf("token TTL %s (document: %s), want 600 s", ttl, doc["token"].TTL)
	}
	if err := st.DeleteToken(ctx, "a.example.com", "tok"); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.Exists(ctx, key).Val(); n != 0 {
		t.Error("token still there after DeleteToken")
	}
}

func TestStreamConsumerGroup(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, _ := schemadoc.Load()
	streamKey, _ := doc["requests"].Key("t:")
	// An entry written before the group exists is still delivered.
	r.Client.XAdd(ctx, &redis.XAddArgs{Stream: streamKey, Values: []any{"name", "early.example.com", "node", "n1"}})
	if err := st.EnsureGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureGroup(ctx, "g"); err != nil {
		t.Fatalf("creating the group twice: %v", err)
	}
	r.Client.XAdd(ctx, &redis.XAddArgs{Stream: streamKey, Values: []any{"name", "late.example.com", "node", "n2"}})
	if typ := r.Client.Type(ctx, streamKey).Val(); typ != doc["requests"].Type {
		t.Errorf("%s is a %s, the document says %s", streamKey, typ, doc["requests"].Type)
	}

	reqs, err := st.ReadRequests(ctx, "g", "c1", 10, 100*time.Millisecond, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 2 || reqs[0].Name != "early.example.com" || reqs[0].Node != "n1" || reqs[1].Name != "late.example.com" {
		t.Fatalf("read %+v", reqs)
	}
	// Unacknowledged entries come back to the same consumer as pending.
	if err := st.Ack(ctx, "g", reqs[0].ID); err != nil {
		t.Fatal(err)
	}
	pending, err := st.ReadRequests(ctx, "g", "c1", 10, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 1 || pending[0].ID != reqs[1].ID {
		t.Errorf("pending %+v, want only the unacknowledged entry", pending)
	}
	// A finite block returns empty rather than waiting forever.
	start := time.Now()
	empty, err := st.ReadRequests(ctx, "g", "c2", 10, 50*time.Millisecond, false)
	if err != nil || len(empty) != 0 {
		t.Errorf("empty read: %v %v", empty, err)
	}
	if time.Since(start) > 30*time.Second {
		t.Error("a read with a finite block did not return")
	}
	if _, err := st.ReadRequests(ctx, "g", "c2", 10, 0, false); err == nil {
		t.Error("want an error for block 0, which Redis reads as forever")
	}
}

func TestLock(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	l, err := st.AcquireLock(ctx, "a.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AcquireLock(ctx, "a.example.com", time.Minute); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("second acquire: %v, want ErrLockHeld", err)
	}
	doc, _ := schemadoc.Load()
	key, _ := doc["lock"].Key("t:", "name", "a.example.com")
	if ttl := r.Client.PTTL(ctx, key).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("lock %s has TTL %s", key, ttl)
	}
	if err := l.Extend(ctx); err != nil {
		t.Fatal(err)
	}
	// Someone else's lease after ours expired: we may neither extend nor delete it.
	r.Client.Set(ctx, key, "other-owner", time.Minute)
	if err := l.Extend(ctx); !errors.Is(err, ErrLockLost) {
		t.Errorf("extend after takeover: %v, want ErrLockLost", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if v := r.Client.Get(ctx, key).Val(); v != "other-owner" {
		t.Errorf("release deleted another owner's lease (value %q)", v)
	}
	r.Client.Del(ctx, key)
	l2, err := st.AcquireLock(ctx, "a.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.Exists(ctx, key).Val(); n != 0 {
		t.Error("lease still there after its owner released it")
	}

	// A lease is kept alive while its holder works: Redis sees its TTL
	// raised again. Waiting for that, not for a fixed time, keeps the test
	// true on a loaded machine; the schedule of the extensions is tested on
	// simulated time (keepalive_test.go).
	const ttl = 3 * time.Second
	l3, err := st.AcquireLock(ctx, "b.example.com", ttl)
	if err != nil {
		t.Fatal(err)
	}
	kctx, cancel := context.WithCancel(ctx)
	lost := make(chan error, 1)
	go l3.KeepAlive(kctx, func(err error) { lost <- err })
	lockKey := st.Keys().Lock("b.example.com")
	lowest := ttl
	for extended := false; !extended; time.Sleep(50 * time.Millisecond) {
		left, err := r.Client.PTTL(ctx, lockKey).Result()
		if err != nil || left <= 0 {
			t.Fatalf("the kept lease has PTTL %v (%v)", left, err)
		}
		extended = left > lowest+100*time.Millisecond
		lowest = min(lowest, left)
	}
	if _, err := st.AcquireLock(ctx, "b.example.com", time.Minute); !errors.Is(err, ErrLockHeld) {
		t.Errorf("lease kept alive was taken: %v", err)
	}
	cancel()
	select {
	case err := <-lost:
		t.Errorf("lease reported lost: %v", err)
	default:
	}
}

func TestAccountKeyIsClaimedOnce(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, _, err := st.ClaimAccountKey(ctx, "https://ca/dir", "ops@example.com", "key-"+string(rune('a'+i)))
			if err != nil {
				t.Error(err)
			}
			got[i] = key
		}()
	}
	wg.Wait()
	for _, k := range got {
		if k != got[0] {
			t.Fatalf("agents got different account keys: %v", got)
		}
	}
	if err := st.SetAccountURI(ctx, "https://ca/dir", "ops@example.com", "https://ca/acct/1"); err != nil {
		t.Fatal(err)
	}
	key, uri, err := st.ClaimAccountKey(ctx, "https://ca/dir", "ops@example.com", "another")
	if err != nil || key != got[0] || uri != "https://ca/acct/1" {
		t.Errorf("after registration: key %q uri %q err %v", key, uri, err)
	}
}

func TestChangesAndDelete(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, _ := schemadoc.Load()
	changesKey, _ := doc["changes"].Key("t:")
	chain, key := leafPEM(t, time.Now().Add(time.Hour), "a.example.com", "b.example.com")
	rec, err := NewCertRecord(chain, key, "a.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if typ := r.Client.Type(ctx, changesKey).Val(); typ != doc["changes"].Type {
		t.Fatalf("%s is a %s, the document says %s", changesKey, typ, doc["changes"].Type)
	}
	removed, err := st.DeleteCert(ctx, "b.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(removed, ",") != "a.example.com,b.example.com" {
		t.Errorf("removed %v, want both names of the certificate", removed)
	}
	for _, name := range []string{"a.example.com", "b.example.com"} {
		if _, err := st.GetCert(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s after delete: %v", name, err)
		}
	}
	if n := r.Client.ZCard(ctx, st.Keys().Expiry()).Val(); n != 0 {
		t.Errorf("expiry index has %d entries after delete", n)
	}
	var got []string
	for _, m := range r.Client.XRange(ctx, changesKey, "-", "+").Val() {
		got = append(got, m.Values["op"].(string)+" "+m.Values["name"].(string))
	}
	want := "put a.example.com,put b.example.com,delete a.example.com,delete b.example.com"
	if strings.Join(got, ",") != want {
		t.Errorf("changes %v, want %s", got, want)
	}
	if _, err := st.DeleteCert(ctx, "a.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: %v, want ErrNotFound", err)
	}
}

// TestTokenWaitsForReplicas: with WaitForReplicas the token write returns
// once a replica has it; a replica reading right after sees it.
func TestTokenWaitsForReplicas(t *testing.T) {
	primary := testenv.StartRedis(t)
	replica := testenv.StartRedis(t)
	ctx := context.Background()
	if err := replica.Client.ReplicaOf(ctx, "127.0.0.1", strings.TrimPrefix(primary.Addr, "127.0.0.1:")).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(replica.Client.Info(ctx, "replication").Val(), "master_link_status:up") {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := New(primary.Client, Keys{})
	st.WaitForReplicas(1)
	for i := range 50 {
		token := "tok" + strconv.Itoa(i)
		if err := st.PutToken(ctx, "a.example.com", token, token+".thumb"); err != nil {
			t.Fatal(err)
		}
		if v := replica.Client.Get(ctx, st.Keys().Token("a.example.com", token)).Val(); v != token+".thumb" {
			t.Fatalf("token %d not on the replica right after PutToken returned (got %q)", i, v)
		}
	}
	// With no replica left the write still succeeds, after the bounded wait.
	replica.Stop()
	if err := st.PutToken(ctx, "a.example.com", "alone", "alone.thumb"); err != nil {
		t.Errorf("PutToken without a replica: %v", err)
	}
}

// TestDeleteCertKeepsNamesTakenOverByALaterCertificate: a name that moved to
// another certificate keeps it when the first certificate is deleted.
func TestDeleteCertKeepsNamesTakenOverByALaterCertificate(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	now := time.Now()
	old := putTestCert(t, st, now, "old.example.com", "moved.example.com")
	newer := putTestCert(t, st, now, "new.example.com", "moved.example.com")

	removed, err := st.DeleteCert(ctx, "old.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != "old.example.com" {
		t.Errorf("removed %v, want only old.example.com", removed)
	}
	got, err := st.GetCert(ctx, "moved.example.com")
	if err != nil || got.Fingerprint != newer.Fingerprint {
		t.Fatalf("moved.example.com after deleting the old certificate: %v, %v", got, err)
	}
	if _, err := st.GetCert(ctx, "old.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old.example.com: %v, want ErrNotFound", err)
	}
	// The later certificate's index entries stay; the old one's are gone.
	if r.Client.ZScore(ctx, st.Keys().Expiry(), "new.example.com").Err() != nil {
		t.Error("the later certificate left the expiry index")
	}
	if r.Client.ZScore(ctx, st.Keys().Expiry(), "old.example.com").Err() == nil {
		t.Error("the deleted certificate is still in the expiry index")
	}
	// Only the deleted name is announced to nginx.
	entries := r.Client.XRange(ctx, st.Keys().Changes(), "-", "+").Val()
	last := entries[len(entries)-1].Values
	if last["op"] != "delete" || last["name"] != "old.example.com" || last["fingerprint"] != old.Fingerprint {
		t.Errorf("last change %v", last)
	}
	for _, e := range entries {
		if e.Values["op"] == "delete" && e.Values["name"] == "moved.example.com" {
			t.Error("a delete of moved.example.com was announced")
		}
	}
}
