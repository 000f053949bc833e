package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// storeMany stores count records for l<i>.example.test with pipelined
// writes, the same certificate under every name (a listing does not parse
// it), in groups of sameExpiry that share one not-after so that ties in
// the expiry index cross page boundaries. It returns the names in the
// order of the expiry index.
func storeMany(t *testing.T, st *Store, count, sameExpiry int) []string {
	t.Helper()
	ctx := context.Background()
	base := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	chain, key := leafPEM(t, base, "l.example.test")
	tmpl, err := NewCertRecord(chain, key, "")
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		at   int64
		name string
	}
	var order []entry
	p := st.rdb.Pipeline()
	for i := range count {
		rec := *tmpl
		rec.Names = []string{fmt.Sprintf("l%d.example.test", i)}
		rec.NotAfter = base.Add(time.Duration(i/sameExpiry) * time.Minute)
		rec.IssuedAt = time.Now()
		st.queueCertWrite(ctx, p, &rec)
		order = append(order, entry{rec.NotAfter.Unix(), rec.Names[0]})
		if p.Len() > 1000 {
			if _, err := p.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(order, func(a, b entry) int {
		if a.at != b.at {
			return int(a.at - b.at)
		}
		return map[bool]int{true: -1, false: 1}[a.name < b.name]
	})
	names := make([]string, len(order))
	for i, e := range order {
		names[i] = e.name
	}
	return names
}

var forever = time.Unix(math.MaxInt64/2, 0)

func listNames(t *testing.T, st *Store, after string, until time.Time, stopAt int) []string {
	t.Helper()
	var got []string
	errEnough := errors.New("enough")
	err := st.ListCerts(context.Background(), after, until, func(c CheckedRecord) error {
		if c.Err != nil {
			t.Errorf("%s: %v", c.Name, c.Err)
		} else if c.Record.Key != "" || c.Record.FullChain != "" || c.Record.Primary() != c.Name {
			t.Errorf("%s: the listing read the chain or key, or lost the names: %+v", c.Name, c.Record)
		}
		got = append(got, c.Name)
		if len(got) == stopAt {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		t.Fatal(err)
	}
	return got
}

// A listing over more than two pages, with not-after ties across the page
// boundaries, sees every record once in the index's order, reads neither
// chain nor key (no HGETALL at all), resumes after any name and stops at
// until.
func TestListCertsPagesInIndexOrder(t *testing.T) {
	st, r := newStore(t)
	want := storeMany(t, st, 2*listPage+137, 7)
	if err := r.Client.ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if got := listNames(t, st, "", forever, 0); !slices.Equal(got, want) {
		t.Fatalf("listed %d names, want %d in index order", len(got), len(want))
	}
	if n, err := r.CommandCalls("hgetall"); err != nil || n != 0 {
		t.Errorf("the listing ran HGETALL %d times (%v): it reads keys", n, err)
	}
	for _, at := range []int{0, listPage - 1, listPage, len(want) - 2} {
		if got := listNames(t, st, want[at], forever, 0); !slices.Equal(got, want[at+1:]) {
			t.Errorf("after %s: %d names, want the %d after it", want[at], len(got), len(want)-at-1)
		}
	}
	if got := listNames(t, st, want[len(want)-1], forever, 0); len(got) != 0 {
		t.Errorf("after the last name: %v", got)
	}
	if got := listNames(t, st, "", forever, 100); !slices.Equal(got, want[:100]) {
		t.Errorf("a walk ended by fn: %d names", len(got))
	}
	until, err := st.rdb.ZScore(context.Background(), st.keys.Expiry(), want[600]).Result()
	if err != nil {
		t.Fatal(err)
	}
	got := listNames(t, st, "", time.Unix(int64(until), 0), 0)
	if len(got) < 601 || !slices.Equal(got, want[:len(got)]) || len(got) >= len(want) {
		t.Errorf("until the not-after of the 601st: %d names", len(got))
	}
	err = st.ListCerts(context.Background(), "gone.example.test", forever, func(CheckedRecord) error { return nil })
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("after a name not in the index: %v, want ErrNotFound", err)
	}
}

// The last entry of a page removed or moved, or an entry written before it,
// while the listing reads the next page: the walk goes on from where it
// was, and no name comes twice.
func TestListCertsSurvivesTheCursorsEntryMoving(t *testing.T) {
	for _, move := range []string{"removed", "moved", "written before"} {
		t.Run(move, func(t *testing.T) {
			st, _ := newStore(t)
			want := storeMany(t, st, listPage+50, 3)
			ctx := context.Background()
			cursor := want[listPage-1]
			var got []string
			err := st.ListCerts(ctx, "", forever, func(c CheckedRecord) error {
				got = append(got, c.Name)
				if c.Name != cursor {
					return nil
				}
				switch move {
				case "removed":
					return st.rdb.ZRem(ctx, st.keys.Expiry(), cursor).Err()
				case "written before":
					return st.rdb.ZAdd(ctx, st.keys.Expiry(), redis.Z{Score: 1, Member: "early.example.test"}).Err()
				}
				return st.rdb.ZAdd(ctx, st.keys.Expiry(), redis.Z{Score: 1, Member: cursor}).Err()
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%d names listed, want the %d stored once each in order", len(got), len(want))
			}
		})
	}
}

// What a listing cannot decode is corrupt, with the key named for a value
// of the wrong type; a name indexed but no longer stored is left out.
func TestListCertsCorruptAndMissing(t *testing.T) {
	st, _ := newStore(t)
	want := storeMany(t, st, 5, 1)
	ctx := context.Background()
	if err := st.rdb.HSet(ctx, st.keys.Cert(want[1]), "not_after", "soon").Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.rdb.Del(ctx, st.keys.Cert(want[2])).Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.rdb.Del(ctx, st.keys.Cert(want[3])).Err(); err != nil {
		t.Fatal(err)
	}
	if err := st.rdb.Set(ctx, st.keys.Cert(want[3]), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	got := map[string]error{}
	err := st.ListCerts(ctx, "", forever, func(c CheckedRecord) error {
		got[c.Name] = c.Err
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var corrupt *CorruptError
	if _, listed := got[want[2]]; listed || len(got) != 4 || got[want[0]] != nil || got[want[4]] != nil {
		t.Errorf("listed %v", got)
	}
	if !errors.As(got[want[1]], &corrupt) || corrupt.Record == nil || corrupt.Record.Primary() != want[1] {
		t.Errorf("a not_after that does not decode: %v", got[want[1]])
	}
	if !errors.As(got[want[3]], &corrupt) || corrupt.Reason != "the key t:cert:"+want[3]+" holds a string, not a hash" {
		t.Errorf("a key of the wrong type: %v", got[want[3]])
	}
}
