package store

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// Every kind of corrupt record is corrupt for GetCert, with a reason that
// says what is wrong and names no key material, and a walk over the
// stored certificates reports each without stopping.
func TestCorruptRecordsAreReportedWithTheirReason(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	good := putTestCert(t, st, time.Now(), "good.example.com")
	corruptions := testenv.Corruptions(t)
	want := map[string]testenv.Corruption{}
	for _, c := range corruptions {
		name := strings.ReplaceAll(c.Name, " ", "-")
		name = strings.ReplaceAll(name, "'", "") + ".example.com"
		rec := putTestCert(t, st, time.Now(), name)
		if err := c.Apply(ctx, r.Client, st.Keys().Cert(name)); err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		want[name] = c
		_, err := st.GetCert(ctx, name)
		var corrupt *CorruptError
		if !errors.As(err, &corrupt) || !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: GetCert = %v, want a CorruptError", c.Name, err)
			continue
		}
		if !strings.Contains(corrupt.Reason, c.Reason) || corrupt.Key != st.Keys().Cert(name) {
			t.Errorf("%s: reason %q (key %s), want one about %q", c.Name, corrupt.Reason, corrupt.Key, c.Reason)
		}
		if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), rec.Key[40:80]) {
			t.Errorf("%s: the error shows key material: %v", c.Name, err)
		}
		if c.Name != "wrong type" && (corrupt.Record == nil || corrupt.Record.Primary() != name || corrupt.Record.Key != "") {
			t.Errorf("%s: the decoded fields %+v: want the names, without the key", c.Name, corrupt.Record)
		}
	}
	// A not_after that is not the leaf's: nginx would trust it.
	drift := putTestCert(t, st, time.Now(), "drift.example.com")
	r.Client.HSet(ctx, st.Keys().Cert("drift.example.com"), "not_after", drift.NotAfter.Add(time.Hour).Unix())
	if _, err := st.GetCert(ctx, "drift.example.com"); err == nil || !strings.Contains(err.Error(), "not_after") {
		t.Errorf("not_after not the leaf's: %v", err)
	}
	// A copy stored under a name the certificate does not cover.
	alias := putTestCert(t, st, time.Now(), "alias.example.com")
	alias.Names = append(alias.Names, "uncovered.example.com")
	if err := st.PutCert(ctx, alias); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetCert(ctx, "uncovered.example.com"); err == nil || !strings.Contains(err.Error(), "not for uncovered.example.com") {
		t.Errorf("a copy under a name the certificate does not cover: %v", err)
	}

	seen := map[string]error{}
	err := st.WalkCerts(ctx, time.Unix(math.MaxInt64/2, 0), func(c CheckedRecord) error {
		if c.Record != nil && c.Record.Key != "" {
			t.Errorf("%s: a walk hands out the private key", c.Name)
		}
		seen[c.Name] = c.Err
		return nil
	})
	if err != nil {
		t.Fatalf("a walk over corrupt records and a key of the wrong type failed: %v", err)
	}
	if err, ok := seen[good.Primary()]; !ok || err != nil {
		t.Errorf("the good record: seen %v, error %v", ok, err)
	}
	for name, c := range want {
		if err := seen[name]; err == nil || !strings.Contains(err.Error(), c.Reason) {
			t.Errorf("walk, %s: %v, want corrupt about %q", c.Name, err, c.Reason)
		}
	}

	// A key of the wrong type can be deleted like any corrupt record.
	if _, err := st.DeleteCert(ctx, "wrong-type.example.com"); err != nil {
		t.Errorf("deleting a key of the wrong type: %v", err)
	}
	if n := r.Client.Exists(ctx, st.Keys().Cert("wrong-type.example.com")).Val(); n != 0 {
		t.Error("the key of the wrong type is still there")
	}
}

// BenchmarkCheckRecord measures what parsing one record costs a walk (list,
// status, the agents' periodic check): chain, key, key match, names.
func BenchmarkCheckRecord(b *testing.B) {
	c := testenv.NewCert(b, testenv.CertSpec{CommonName: "a.example.com", DNSNames: []string{"a.example.com", "b.example.com"}})
	rec, err := NewCertRecord(c.ChainPEM(), c.KeyPEM, "a.example.com")
	if err != nil {
		b.Fatal(err)
	}
	f := map[string]string{}
	for k, v := range rec.fields() {
		f[k], _ = v.(string)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := checkRecord("a.example.com", "cert:a.example.com", f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWalkCerts measures a walk over 10,000 stored certificates, as
// list, status and the agents' periodic check make it: every record read
// and parsed, one page at a time.
func BenchmarkWalkCerts(b *testing.B) {
	st := New(testenv.StartRedis(b).Client, Keys{Prefix: "b:"})
	now := time.Now()
	const total = 10_000
	fillSynthetic(b, st, total, 0, now)
	ctx := context.Background()
	for b.Loop() {
		n := 0
		err := st.WalkCerts(ctx, time.Unix(math.MaxInt64/2, 0), func(c CheckedRecord) error {
			if c.Err != nil {
				return c.Err
			}
			n++
			return nil
		})
		if err != nil || n != total {
			b.Fatalf("walked %d of %d: %v", n, total, err)
		}
	}
}
