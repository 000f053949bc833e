package nginxtest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// seedNames writes count records named <prefix><i>.example.test with
// pipelined writes and no changes entry (only the index's SCAN finds them):
// nginx only needs their keys to index them, so each holds a not_after
// alone. The records handshakes are made for are stored apart, whole.
func (e *env) seedNames(prefix string, count int) {
	e.t.Helper()
	ctx := context.Background()
	notAfter := strconv.FormatInt(time.Now().Add(24*time.Hour).Unix(), 10)
	p := e.redis.Client.Pipeline()
	for i := range count {
		p.HSet(ctx, e.key("cert", "name", fmt.Sprintf("%s%d.example.test", prefix, i)), "not_after", notAfter)
		if p.Len() == 5000 || i == count-1 {
			if _, err := p.Exec(ctx); err != nil {
				e.t.Fatal(err)
			}
		}
	}
}

// floodRedisLookups runs a flood of count random names and returns how many
// HMGETs it cost.
func (e *env) floodRedisLookups(count int) int64 {
	e.t.Helper()
	before, err := e.redis.CommandCalls("hmget")
	if err != nil {
		e.t.Fatal(err)
	}
	e.flood("flood.example.test", count)
	after, _ := e.redis.CommandCalls("hmget")
	return after - before
}

// 100,000 names in a 1 MB dict, which held some 8,000 names a key each:
// the index is built, without an error line, and answers a flood; the
// certificates it lists are served during the flood.
func TestNameIndexHoldsManyNamesInASmallDict(t *testing.T) {
	const count = 100_000
	seeded := newLeaf(t, "seeded", []string{"seeded.example.test"}, time.Now().Add(24*time.Hour))
	e := startSeeded(t, testenv.NginxOptions{
		LuaConfig:   map[string]string{"index_threshold": "5", "first_handshake_wait": "0"},
		SharedDicts: map[string]string{"certagent_names": "1m"},
	}, func(e *env) {
		e.seedNames("many", count)
		e.storeUnannounced("seeded.example.test", seeded)
	})
	waitFor(t, "the name index", func() bool { return e.stats().indexReady })
	if st := e.stats(); st.indexBuilds != 1 || st.indexNames != count+1 {
		t.Errorf("%d builds, the last of %d names; want one of %d", st.indexBuilds, st.indexNames, count+1)
	}
	// Until the node counts 5 misses a second, names go to Redis; then the
	// index answers, but for its false positives (about 1 in 100).
	if n := e.floodRedisLookups(300); n > 40 {
		t.Errorf("300 handshakes for random names ran HMGET %d times; the name index should answer most", n)
	}
	if got := e.mustHandshake("seeded.example.test"); !got.Equal(seeded.cert) {
		t.Fatalf("during the flood seeded.example.test was served %q", got.Subject.CommonName)
	}
	if lines := e.errorLines(0); len(lines) != 0 {
		t.Errorf("error lines: %q", lines)
	}
}

// A dict too small for the filter of the stored names: one error line says
// what size it needs (not one per worker or per attempt), the index stays
// out of use, and every certificate is still served.
func TestNameIndexTooSmallSaysWhatItNeeds(t *testing.T) {
	seeded := newLeaf(t, "seeded", []string{"seeded.example.test"}, time.Now().Add(24*time.Hour))
	e := startSeeded(t, testenv.NginxOptions{
		LuaConfig:       map[string]string{"index_threshold": "5", "first_handshake_wait": "0"},
		SharedDicts:     map[string]string{"certagent_names": "32k"},
		WorkerProcesses: 2,
	}, func(e *env) {
		e.seedNames("many", 30_000)
		e.storeUnannounced("seeded.example.test", seeded)
	})
	const says = "the name index of 30001 names needs lua_shared_dict certagent_names of at least 2m"
	waitFor(t, "the dict size to be said", func() bool { return strings.Contains(e.nginx.ErrorLog(), says) })
	// More polls, more handshakes: still one line. Each poll that reads
	// the changes stream (one XREAD on an idle stream) then asks the index
	// to build: two of them after the flood have had their chance to say it
	// again.
	polls := e.commands("xread")
	e.flood("flood.example.test", 50)
	waitFor(t, "two more reads of the changes stream", func() bool { return e.commands("xread") >= polls+2 })
	e.settle()
	if n := strings.Count(e.nginx.ErrorLog(), "needs lua_shared_dict"); n != 1 {
		t.Errorf("%d lines say the size, want 1", n)
	}
	if lines := e.errorLines(0); len(lines) != 1 || strings.Contains(e.nginx.ErrorLog(), "no memory") {
		t.Errorf("error lines: %q", lines)
	}
	if e.stats().indexReady {
		t.Fatal("the name index is in use although it could not hold every name")
	}
	if got := e.mustHandshake("seeded.example.test"); !got.Equal(seeded.cert) {
		t.Fatalf("seeded.example.test was served %q", got.Subject.CommonName)
	}
}

// Names the changes stream adds after the build are kept beside the
// filter; when they fill the dict the index is built again with them in
// the filter, and a certificate stored last is served during a flood.
func TestNameIndexFoldsAddedNamesIntoANewFilter(t *testing.T) {
	e := startSeeded(t, testenv.NginxOptions{
		LuaConfig:   map[string]string{"index_threshold": "5", "first_handshake_wait": "0"},
		SharedDicts: map[string]string{"certagent_names": "64k"},
	}, func(e *env) { e.seedNames("many", 1000) })
	waitFor(t, "the name index", func() bool { return e.stats().indexReady })
	notAfter := strconv.FormatInt(time.Now().Add(24*time.Hour).Unix(), 10)
	const added = 1000
	for i := range added {
		e.storeFields(fmt.Sprintf("added%d.example.test", i), map[string]any{"not_after": notAfter})
	}
	last := newLeaf(t, "last", []string{"last.example.test"}, time.Now().Add(24*time.Hour))
	e.store("last.example.test", last)
	waitFor(t, "a second build", func() bool { st := e.stats(); return st.indexBuilds >= 2 && st.indexReady })
	if st := e.stats(); st.indexNames < 1000+added/2 {
		t.Errorf("the last build found %d names: it should hold the names added before it", st.indexNames)
	}
	e.waitChangesRead()
	if n := e.floodRedisLookups(200); n > 40 {
		t.Errorf("200 handshakes for random names ran HMGET %d times", n)
	}
	if got := e.mustHandshake("last.example.test"); !got.Equal(last.cert) {
		t.Fatalf("during the flood last.example.test was served %q", got.Subject.CommonName)
	}
	if lines := e.errorLines(0); len(lines) != 0 {
		t.Errorf("error lines: %q", lines)
	}
}
