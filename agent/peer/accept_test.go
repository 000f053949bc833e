package peer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// siteStore starts a Redis for one site and returns its store.
func siteStore(t *testing.T) (*store.Store, redis.UniversalClient) {
	t.Helper()
	r := testenv.StartRedis(t)
	return store.New(r.Client, store.Keys{Prefix: "t:"}), r.Client
}

// issued makes a record for names (the first is the primary) whose leaf,
// signed by an intermediate, starts at notBefore and lasts 90 days.
func issued(t *testing.T, notBefore time.Time, names ...string) Record {
	t.Helper()
	return issuedBy(t, testCA(t, notBefore), notBefore, names...)
}

// testCA is a CA that can issue certificates valid from notBefore.
func testCA(t *testing.T, notBefore time.Time) *testenv.Cert {
	return testenv.NewCert(t, testenv.CertSpec{CommonName: "test CA", IsCA: true,
		NotBefore: notBefore.Add(-100 * 24 * time.Hour), NotAfter: notBefore.Add(365 * 24 * time.Hour)})
}

// issuedBy is issued with the CA ca.
func issuedBy(t *testing.T, ca *testenv.Cert, notBefore time.Time, names ...string) Record {
	t.Helper()
	leaf := testenv.NewCert(t, testenv.CertSpec{CommonName: names[0], DNSNames: names, Parent: ca,
		NotBefore: notBefore, NotAfter: notBefore.Add(90 * 24 * time.Hour)})
	return Record{FullChain: string(leaf.ChainPEM()), Key: string(leaf.KeyPEM), Primary: names[0],
		KeyType: "ec256", CA: "https://ca.example/dir", CertURL: "https://ca.example/cert/1",
		IssuedAt: notBefore.Add(time.Minute).Unix()}
}

func TestAcceptStoresAValidRecordRebuiltFromItsChain(t *testing.T) {
	st, _ := siteStore(t)
	ctx := context.Background()
	now := time.Now()
	r := issued(t, now.Add(-time.Hour), "a.example.com", "B.Example.com")
	// Whatever the sender wraps around the PEM blocks is not stored.
	r.FullChain = "junk before\n" + r.FullChain
	res, err := Accept(ctx, st, "b.example.com", r, now)
	if err != nil || !res.Stored {
		t.Fatalf("Accept = %+v, %v", res, err)
	}
	got, err := st.GetCert(ctx, "b.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got.Primary() != "a.example.com" || len(got.Names) != 2 || got.Names[1] != "b.example.com" {
		t.Errorf("names %v: want the primary first, then the leaf's names normalized", got.Names)
	}
	if got.KeyType != r.KeyType || got.CA != r.CA || got.CertURL != r.CertURL || got.IssuedAt.Unix() != r.IssuedAt {
		t.Errorf("copied fields differ: %+v", got)
	}
	if got.FullChain[:5] != "-----" {
		t.Error("the stored chain is not PEM certificates only")
	}
	// What travels back is the same certificate.
	back := RecordOf(got)
	if back.Primary != "a.example.com" || back.Key != got.Key || back.FullChain != got.FullChain || back.IssuedAt != r.IssuedAt {
		t.Errorf("RecordOf = %+v", back)
	}
	if res, err := Accept(ctx, st, "a.example.com", back, now); err != nil || res.Stored || res.Reason != store.ReasonSame {
		t.Errorf("the same record again: %+v, %v", res, err)
	}
	older := issued(t, now.Add(-2*time.Hour), "a.example.com")
	if res, err := Accept(ctx, st, "a.example.com", older, now); err != nil || res.Stored || res.Reason != store.ReasonOlder {
		t.Errorf("an older record: %+v, %v", res, err)
	}

	// A wildcard certificate is accepted for one label below its parent.
	wild := issued(t, now.Add(-time.Hour), "*.example.net")
	if res, err := Accept(ctx, st, "shop.example.net", wild, now); err != nil || !res.Stored {
		t.Errorf("a wildcard for a name below it: %+v, %v", res, err)
	}
	if _, err := st.GetCert(ctx, "*.example.net"); err != nil {
		t.Errorf("the wildcard is not stored under its own name: %v", err)
	}

	// An issued_at in the future is brought back to now.
	future := issued(t, now.Add(-time.Minute), "c.example.com")
	future.IssuedAt = now.Add(time.Hour).Unix()
	if _, err := Accept(ctx, st, "c.example.com", future, now); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.GetCert(ctx, "c.example.com"); got.IssuedAt.Unix() != now.Unix() {
		t.Errorf("issued_at %s, want now", got.IssuedAt)
	}
}

func TestAcceptRefusesInvalidRecords(t *testing.T) {
	st, rdb := siteStore(t)
	ctx := context.Background()
	now := time.Now()
	good := issued(t, now.Add(-time.Hour), "a.example.com", "www.a.example.com")
	other := issued(t, now.Add(-time.Hour), "a.example.com")
	for _, tc := range []struct {
		what string
		name string
		r    func(r Record) Record
	}{
		{"a certificate for another name", "b.example.com", nil},
		{"a name that is not in normal form", "A.example.com", nil},
		{"a name with a trailing dot", "a.example.com.", nil},
		{"a wildcard for a name two labels below", "x.y.example.net", func(Record) Record {
			return issued(t, now.Add(-time.Hour), "*.example.net")
		}},
		{"a wildcard name for a plain certificate", "*.a.example.com", nil},
		{"a primary that is not among the names", "a.example.com", func(r Record) Record { r.Primary = "b.example.com"; return r }},
		{"a primary not in normal form", "a.example.com", func(r Record) Record { r.Primary = "A.example.com"; return r }},
		{"the key of another certificate", "a.example.com", func(r Record) Record { r.Key = other.Key; return r }},
		{"no key", "a.example.com", func(r Record) Record { r.Key = ""; return r }},
		{"a chain that is not PEM", "a.example.com", func(r Record) Record { r.FullChain = "garbage"; return r }},
		{"an expired certificate", "a.example.com", func(Record) Record {
			return issued(t, now.Add(-91*24*time.Hour), "a.example.com")
		}},
		// nginx would serve it to clients that refuse it, and its later
		// not-before would make it win over every certificate issued until then.
		{"a certificate not valid yet", "a.example.com", func(Record) Record {
			return issued(t, now.Add(24*time.Hour), "a.example.com")
		}},
	} {
		r := good
		if tc.r != nil {
			r = tc.r(good)
		}
		res, err := Accept(ctx, st, tc.name, r, now)
		if !errors.Is(err, ErrInvalidRecord) || res.Stored {
			t.Errorf("%s: %+v, %v; want ErrInvalidRecord", tc.what, res, err)
		}
	}
	if keys := rdb.Keys(ctx, "*").Val(); len(keys) != 0 {
		t.Errorf("refused records wrote %v", keys)
	}
}
