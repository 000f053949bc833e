package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func putTestCert(t *testing.T, st *Store, issuedAt time.Time, names ...string) *CertRecord {
	t.Helper()
	chain, key := leafPEM(t, issuedAt.Add(90*24*time.Hour), names...)
	rec, err := NewCertRecord(chain, key, names[0])
	if err != nil {
		t.Fatal(err)
	}
	rec.KeyType, rec.CA, rec.IssuedAt = "ec256", "https://ca/dir", issuedAt
	if err := st.PutCert(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestRenewalScheduleFollowsCertificateWrites(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	a := putTestCert(t, st, now.Add(-time.Minute), "a.example.com", "www.a.example.com")
	putTestCert(t, st, now.Add(time.Hour), "b.example.com")

	due, err := st.RenewalDue(ctx, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 1 || due[0].Name != "a.example.com" {
		t.Fatalf("due %v: want only a.example.com (the primary name, scheduled at its issue time)", due)
	}

	state := &RenewalState{RenewAt: now.Add(time.Hour), WindowStart: now, WindowEnd: now.Add(2 * time.Hour),
		ARINext: now.Add(6 * time.Hour), Failures: 2, LastError: "CA down", LastFailure: now}
	if err := st.SetRenewal(ctx, "a.example.com", a.Fingerprint, state, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, err := st.GetRenewal(ctx, "a.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if *got != *state {
		t.Errorf("state %+v, want %+v", got, state)
	}
	if due, _ := st.RenewalDue(ctx, now, 0); len(due) != 0 {
		t.Errorf("due after rescheduling: %v", due)
	}
	if failing, err := st.FailingRenewals(ctx, 0); err != nil || len(failing) != 1 || failing[0].Name != "a.example.com" {
		t.Errorf("failing renewals %v, %v", failing, err)
	}
	next, err := st.NextRenewals(ctx, 1)
	if err != nil || len(next) != 1 || next[0].Name != "a.example.com" || !next[0].NotAfter.Equal(now.Add(time.Hour)) {
		t.Errorf("next renewals %v, %v", next, err)
	}

	// A state computed for a certificate that has been replaced is refused.
	if err := st.SetRenewal(ctx, "a.example.com", "stale-fingerprint", state, now); !errors.Is(err, ErrReplaced) {
		t.Errorf("stale SetRenewal: %v, want ErrReplaced", err)
	}
	// Writing the certificate again resets its state and schedules it at its issue time.
	putTestCert(t, st, now.Add(-time.Second), "a.example.com")
	if got, _ := st.GetRenewal(ctx, "a.example.com"); got.Failures != 0 || !got.RenewAt.IsZero() {
		t.Errorf("state after a new certificate: %+v", got)
	}
	if due, _ := st.RenewalDue(ctx, now, 0); len(due) != 1 {
		t.Errorf("a new certificate is not due for a look: %v", due)
	}
	if failing, _ := st.FailingRenewals(ctx, 0); len(failing) != 0 {
		t.Errorf("still failing after a new certificate: %v", failing)
	}

	// Deleting removes schedule and state.
	if _, err := st.DeleteCert(ctx, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.ScheduleCount(ctx); n != 1 {
		t.Errorf("schedule holds %d names after the delete, want 1", n)
	}
	if r.Client.Exists(ctx, st.Keys().Renewal("a.example.com")).Val() != 0 {
		t.Error("renewal state left behind")
	}

	// Every key written matches the schema document.
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetRenewal(ctx, "b.example.com", mustFingerprint(t, st, "b.example.com"), state, now); err != nil {
		t.Fatal(err)
	}
	for id, key := range map[string]string{"renewals": st.Keys().Renewals(), "renewal": st.Keys().Renewal("b.example.com"),
		"renewalfail": st.Keys().RenewalFailures()} {
		typ := r.Client.Type(ctx, key).Val()
		if want := doc[id].Type; typ != want {
			t.Errorf("%s is a %s, the schema says %s", key, typ, want)
		}
	}
}

func mustFingerprint(t *testing.T, st *Store, name string) string {
	t.Helper()
	rec, err := st.GetCert(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Fingerprint
}

func TestScheduleMissingFillsFromTheExpiryIndex(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	now := time.Now()
	putTestCert(t, st, now, "old.example.com")
	// Certificates written before the schedule existed are only in the expiry index.
	r.Client.Del(ctx, st.Keys().Renewals())
	putTestCert(t, st, now.Add(time.Hour), "new.example.com")
	added, err := st.ScheduleMissing(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if added != 1 {
		t.Errorf("added %d, want 1 (only the missing name)", added)
	}
	if due, _ := st.RenewalDue(ctx, now, 0); len(due) != 1 || due[0].Name != "old.example.com" {
		t.Errorf("due %v", due)
	}
}

func TestClaimDueGivesAnEntryToOneCaller(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	putTestCert(t, st, now.Add(-time.Minute), "claim.example.com")
	due, err := st.RenewalDue(ctx, now, 0)
	if err != nil || len(due) != 1 {
		t.Fatalf("due %v, %v", due, err)
	}
	got, err := st.ClaimDue(ctx, due[0], now.Add(5*time.Minute))
	if err != nil || !got {
		t.Fatalf("first claim: %v, %v", got, err)
	}
	// A second agent that read the same entry does not get it.
	if got, err := st.ClaimDue(ctx, due[0], now.Add(5*time.Minute)); err != nil || got {
		t.Errorf("second claim: %v, %v", got, err)
	}
	if again, _ := st.RenewalDue(ctx, now, 0); len(again) != 0 {
		t.Errorf("a claimed entry is still due: %v", again)
	}
	if later, _ := st.RenewalDue(ctx, now.Add(5*time.Minute), 0); len(later) != 1 {
		t.Errorf("the claim does not run out: %v", later)
	}
}

// TestUnscheduleKeepsWhatIsStored: Unschedule drops a schedule entry only
// when no certificate is stored under the name, UnscheduleSecondary only
// when the one stored there is indexed under another (primary) name.
func TestUnscheduleKeepsWhatIsStored(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	putTestCert(t, st, now, "p.example.com", "s.example.com")
	// Schedule entries for a secondary name and for a name never stored.
	for _, name := range []string{"s.example.com", "gone.example.com"} {
		if err := r.Client.ZAdd(ctx, st.Keys().Renewals(), redisZ(now.Unix(), name)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	scheduled := func(name string) bool {
		return r.Client.ZScore(ctx, st.Keys().Renewals(), name).Err() == nil
	}
	for _, name := range []string{"p.example.com", "s.example.com", "gone.example.com"} {
		if err := st.UnscheduleSecondary(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if !scheduled("p.example.com") || scheduled("s.example.com") || !scheduled("gone.example.com") {
		t.Errorf("after UnscheduleSecondary: primary %v, secondary %v, gone %v; want true, false, true",
			scheduled("p.example.com"), scheduled("s.example.com"), scheduled("gone.example.com"))
	}
	for _, name := range []string{"p.example.com", "gone.example.com"} {
		if err := st.Unschedule(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if !scheduled("p.example.com") || scheduled("gone.example.com") {
		t.Errorf("after Unschedule: stored %v, gone %v; want true, false", scheduled("p.example.com"), scheduled("gone.example.com"))
	}
}
