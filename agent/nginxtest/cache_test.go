package nginxtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// statsLocation shows the cache of the worker that answers and the Redis
// module the Lua chose.
const statsLocation = `
        location = /_test/stats {
            content_by_lua_block {
                local s = require("certagent.cache").stats()
                local index = require("certagent.index")
                -- A benchmark's baseline index may have no stats.
                local is = index.stats and index.stats() or { names = 0, builds = 0 }
                ngx.print(s.lru_count, " ", s.lru_capacity, " ", s.shared_certs, " ",
                          require("certagent.redis").client_name, " ",
                          require("certagent.changes").position() or "none", " ",
                          tostring(index.ready()), " ", is.names, " ", is.builds, " ",
                          ngx.shared.certagent_names:capacity() - ngx.shared.certagent_names:free_space())
            }
        }
`

type cacheStats struct {
	lruCount, lruCapacity, sharedCerts int
	redisModule                        string
	changesPosition                    string // "none" before the worker first read the stream
	indexReady                         bool
	indexNames, indexBuilds            int // the names of the last build, and how many finished
	namesDictUsed                      int // bytes of the names dict in use (whole pages)
}

func (e *env) stats() cacheStats {
	e.t.Helper()
	resp, err := http.Get("http://" + e.nginx.HTTPAddr + "/_test/stats")
	if err != nil {
		e.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var s cacheStats
	if _, err := fmt.Sscan(string(body), &s.lruCount, &s.lruCapacity, &s.sharedCerts, &s.redisModule, &s.changesPosition, &s.indexReady,
		&s.indexNames, &s.indexBuilds, &s.namesDictUsed); err != nil {
		e.t.Fatalf("stats %q: %v", body, err)
	}
	return s
}

// startWith is start with changes to the shipped http snippet.
func startWith(t *testing.T, opts testenv.NginxOptions) *env {
	t.Helper()
	return startSeeded(t, opts, nil)
}

// startSeeded is startWith with seed writing to Redis before nginx starts.
func startSeeded(t testing.TB, opts testenv.NginxOptions, seed func(e *env)) *env {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	prefix := "cc" + strconv.Itoa(os.Getpid()%1000) + ":"
	opts.RedisURL = r.URL
	opts.KeyPrefix = prefix
	opts.Env = map[string]string{"CERTAGENT_NODE": testNode}
	opts.HTTPServerExtra = statsLocation + opts.HTTPServerExtra
	e := &env{t: t, redis: r, prefix: prefix, schema: schema}
	if seed != nil {
		seed(e)
	}
	n := testenv.StartNginx(t, opts)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	e.nginx = n
	return e
}

// waitChangesRead waits until the worker answering the stats has applied
// every entry of the changes stream, or, when there is no stream yet, has
// made its first read (which sets its position to "0-0"). A lookup that was
// in flight when its name's entry (or the worker's first read, which empties
// the cache) was applied is served but not cached; tests that need a
// certificate or a missing record cached store it, wait for this, and only
// then make the handshake that caches it.
func (e *env) waitChangesRead() {
	e.t.Helper()
	waitFor(e.t, "the worker to read the changes stream to its end", func() bool {
		last := "0-0"
		info, err := e.redis.Client.XInfoStream(context.Background(), e.key("changes")).Result()
		if err == nil {
			last = info.LastGeneratedID
		} else if !strings.Contains(err.Error(), "no such key") {
			return false
		}
		return e.stats().changesPosition == last
	})
}

// storeMany stores a certificate for each of count names and returns them.
func (e *env) storeMany(prefix string, count int) ([]string, map[string]leaf) {
	names := make([]string, count)
	leaves := map[string]leaf{}
	for i := range names {
		names[i] = fmt.Sprintf("%s%d.example.test", prefix, i)
		l := newLeaf(e.t, names[i], []string{names[i]}, time.Now().Add(24*time.Hour))
		e.store(names[i], l)
		leaves[names[i]] = l
	}
	return names, leaves
}

func TestWorkerLRUBound(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"lru_size": "3"}})
	names, leaves := e.storeMany("lru", 8)
	e.waitChangesRead()
	for round := 0; round < 2; round++ {
		for _, name := range names {
			if got := e.mustHandshake(name); !got.Equal(leaves[name].cert) {
				t.Fatalf("round %d, %s: served %q, want its stored certificate", round, name, got.Subject.CommonName)
			}
			if s := e.stats(); s.lruCount > 3 || s.lruCapacity != 3 {
				t.Fatalf("after %s: the worker cache holds %d of capacity %d, want at most 3 of 3", name, s.lruCount, s.lruCapacity)
			}
		}
	}
	// What the LRU let go is still shared by the workers.
	if s := e.stats(); s.sharedCerts != len(names) {
		t.Errorf("the shared dict holds %d certificates, want %d", s.sharedCerts, len(names))
	}
}

func TestSharedDictEvictionKeepsServing(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{
		LuaConfig:   map[string]string{"lru_size": "2"},
		SharedDicts: map[string]string{"certagent_certs": "32k"},
	})
	names, leaves := e.storeMany("evict", 30)
	offset := e.nginx.ErrorLogSize()
	for round := 0; round < 3; round++ {
		for _, name := range names {
			if got := e.mustHandshake(name); !got.Equal(leaves[name].cert) {
				t.Fatalf("round %d, %s: served %q, want its stored certificate", round, name, got.Subject.CommonName)
			}
		}
	}
	s := e.stats()
	if s.sharedCerts == 0 || s.sharedCerts >= len(names) {
		t.Errorf("the 32k shared dict holds %d of %d certificates; the test needs it to evict", s.sharedCerts, len(names))
	}
	if lines := e.errorLines(offset); len(lines) != 0 {
		t.Errorf("errors logged while the shared dict evicts:\n%s", strings.Join(lines, "\n"))
	}
}

// servedLoop runs handshakes for name until done says the served
// certificate is what the test waits for; every handshake must succeed and
// serve one of the allowed certificates.
func (e *env) servedLoop(name, what string, allowed func(served string) bool, done func(served string) bool) {
	e.t.Helper()
	waitFor(e.t, what, func() bool {
		got, err := e.handshake(name)
		if err != nil {
			e.t.Fatalf("handshake for %s failed: %v", name, err)
		}
		served := got.Subject.CommonName
		if !allowed(served) {
			e.t.Fatalf("%s: served %q", name, served)
		}
		return done(served)
	})
}

func TestRenewedCertificateReachesEveryWorker(t *testing.T) {
	// Two workers, and a cache_ttl far beyond the test: only the changes
	// stream can bring the renewed certificate.
	e := startWith(t, testenv.NginxOptions{WorkerProcesses: 2, LuaConfig: map[string]string{"cache_ttl": "3600"}})
	// Both workers: 20 handshakes in a row get the renewal.
	e.renewalReachesEveryWorker("renew.example.test", 10, 20)
}

// renewalReachesEveryWorker stores a certificate for name, makes warm
// handshakes of it (into the workers' caches), stores a renewal and waits
// until inARow handshakes in a row get the renewal.
func (e *env) renewalReachesEveryWorker(name string, warm, inARow int) {
	e.t.Helper()
	old := newLeaf(e.t, "first issue", []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, old)
	for i := 0; i < warm; i++ {
		if got := e.mustHandshake(name); !got.Equal(old.cert) {
			e.t.Fatalf("served %q, want the first certificate", got.Subject.CommonName)
		}
	}
	renewed := newLeaf(e.t, "renewal", []string{name}, time.Now().Add(48*time.Hour))
	e.store(name, renewed)
	either := func(cn string) bool { return cn == "first issue" || cn == "renewal" }
	got := 0
	e.servedLoop(name, "the renewed certificate from every worker", either, func(cn string) bool {
		if cn != "renewal" {
			got = 0
			return false
		}
		got++
		return got >= inARow
	})
}

func TestDeletedCertificateStopsBeingServed(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{WorkerProcesses: 2})
	l := newLeaf(t, "to delete", []string{"gone.example.test"}, time.Now().Add(24*time.Hour))
	e.store("gone.example.test", l)
	for i := 0; i < 10; i++ {
		if got := e.mustHandshake("gone.example.test"); !got.Equal(l.cert) {
			t.Fatalf("served %q, want the stored certificate", got.Subject.CommonName)
		}
	}
	e.remove("gone.example.test")
	fallback := e.nginx.FallbackCert.Subject.CommonName
	either := func(cn string) bool { return cn == "to delete" || cn == fallback }
	inARow := 0
	e.servedLoop("gone.example.test", "the deleted certificate to go from every worker", either, func(cn string) bool {
		if cn != fallback {
			inARow = 0
			return false
		}
		inARow++
		return inARow >= 20
	})
}

func TestNegativeCache(t *testing.T) {
	t.Run("one lookup covers the wildcard and is remembered", func(t *testing.T) {
		// Without the first handshake's wait, whose polls are Redis lookups
		// too (wait_test.go counts those).
		e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"negative_ttl": "3600",
			"first_handshake_wait": "0"}})
		// A worker's first read of the stream drops the cache, and a lookup
		// in flight then does not cache its answer: count after it.
		waitFor(t, "the worker to follow the changes stream", func() bool { return e.stats().changesPosition != "none" })
		before, err := e.redis.CommandCalls("hmget")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20; i++ {
			if got := e.mustHandshake("a.neg.example.test"); !e.isFallback(got) {
				t.Fatalf("served %q, want the fallback", got.Subject.CommonName)
			}
		}
		after, _ := e.redis.CommandCalls("hmget")
		if after-before != 2 {
			t.Errorf("HMGET ran %d times for 20 handshakes of one unknown name, want 2 (the name and its wildcard, once)", after-before)
		}
		// A write of the wildcard drops the missing wildcard at once, not after
		// negative_ttl.
		wild := newLeaf(t, "*.neg.example.test", []string{"*.neg.example.test"}, time.Now().Add(24*time.Hour))
		e.store("*.neg.example.test", wild)
		e.servedLoop("a.neg.example.test", "the new wildcard certificate",
			func(string) bool { return true }, func(cn string) bool { return cn == "*.neg.example.test" })
		// And a write of the exact name wins over it.
		exact := newLeaf(t, "a.neg.example.test", []string{"a.neg.example.test"}, time.Now().Add(24*time.Hour))
		e.store("a.neg.example.test", exact)
		e.servedLoop("a.neg.example.test", "the new exact certificate",
			func(string) bool { return true }, func(cn string) bool { return cn == "a.neg.example.test" })
	})
	t.Run("entries expire", func(t *testing.T) {
		// Without the name index: the loop below is a flood of one name, and
		// under a flood the index, not Redis, answers for a record written
		// without a changes entry.
		e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"negative_ttl": "1", "name_index": "false"}})
		if got := e.mustHandshake("quiet.example.test"); !e.isFallback(got) {
			t.Fatalf("served %q, want the fallback", got.Subject.CommonName)
		}
		// Written without a changes entry: only the expiry of the negative
		// entry lets nginx see it.
		l := newLeaf(t, "quiet", []string{"quiet.example.test"}, time.Now().Add(24*time.Hour))
		e.storeUnannounced("quiet.example.test", l)
		fallback := e.nginx.FallbackCert.Subject.CommonName
		e.servedLoop("quiet.example.test", "the certificate once the negative entry expired",
			func(cn string) bool { return cn == "quiet" || cn == fallback }, func(cn string) bool { return cn == "quiet" })
	})
}

func TestTrimmedChangesDropTheCache(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{})
	old := newLeaf(t, "before", []string{"trim.example.test"}, time.Now().Add(24*time.Hour))
	e.store("trim.example.test", old)
	if got := e.mustHandshake("trim.example.test"); !got.Equal(old.cert) {
		t.Fatalf("served %q, want the stored certificate", got.Subject.CommonName)
	}
	// One transaction: a silent replacement, then more changes than the
	// stream keeps, so the worker cannot read what it missed.
	ctx := context.Background()
	changed := newLeaf(t, "after", []string{"trim.example.test"}, time.Now().Add(24*time.Hour))
	_, err := e.redis.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, e.key("cert", "name", "trim.example.test"), leafFields(changed))
		for i := 0; i < 1500; i++ {
			p.XAdd(ctx, &redis.XAddArgs{Stream: e.key("changes"), MaxLen: 1000, Approx: true,
				Values: []any{"name", fmt.Sprintf("filler%d.example.test", i), "op", "put"}})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.servedLoop("trim.example.test", "the cache to be dropped",
		func(cn string) bool { return cn == "before" || cn == "after" }, func(cn string) bool { return cn == "after" })
}

func TestRedisDownServesCachedCertificates(t *testing.T) {
	// cache_ttl 1 s: the handshakes below ask Redis, fail, and fall back to
	// the cached copies.
	e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"cache_ttl": "1"}})
	lasting := newLeaf(t, "lasting", []string{"lasting.example.test"}, time.Now().Add(24*time.Hour))
	e.store("lasting.example.test", lasting)
	e.waitChangesRead()
	// The record says the certificate ends in 3 s; nginx must stop serving
	// it then, although it keeps it and Redis is gone. (Written without a
	// changes entry, so that nothing can keep its lookup from being cached.)
	ending := newLeaf(t, "ending", []string{"ending.example.test"}, time.Now().Add(24*time.Hour))
	fields := leafFields(ending)
	fields["not_after"] = strconv.FormatInt(time.Now().Add(3*time.Second).Unix(), 10)
	e.write("ending.example.test", fields, false)
	for _, name := range []string{"lasting.example.test", "ending.example.test", "wild.example.test"} {
		if got := e.mustHandshake(name); e.isFallback(got) != (name == "wild.example.test") {
			t.Fatalf("%s: served %q before Redis stopped", name, got.Subject.CommonName)
		}
	}

	e.redis.Stop()
	fallback := e.nginx.FallbackCert.Subject.CommonName
	e.servedLoop("ending.example.test", "the ending certificate to stop being served",
		func(cn string) bool { return cn == "ending" || cn == fallback },
		func(cn string) bool {
			if got := e.mustHandshake("lasting.example.test"); !got.Equal(lasting.cert) {
				t.Fatalf("with Redis down, lasting.example.test was served %q", got.Subject.CommonName)
			}
			return cn == fallback
		})
	for i := 0; i < 5; i++ {
		if got := e.mustHandshake("lasting.example.test"); !got.Equal(lasting.cert) {
			t.Fatalf("with Redis down, lasting.example.test was served %q", got.Subject.CommonName)
		}
	}
}

// TestRedisModuleNames: the Lua works with OpenResty's resty.redis and with
// Debian's nginx.redis, and says which one it uses. The stack under test
// installs one of them; the other name is offered in a directory of the
// test's, as the same lua-resty-redis file. certagent prefers resty.redis,
// so for nginx.redis on OpenResty that directory also hides resty.redis: its
// require fails, as it does where it is not installed.
func TestRedisModuleNames(t *testing.T) {
	stack := testenv.Stack(t)
	installed := filepath.Join(stack.LuaLib, strings.ReplaceAll(stack.RedisModule, ".", "/")+".lua")
	offered := map[string]string{"resty/redis.lua": fmt.Sprintf("return dofile(%q)\n", installed)}
	other := "resty.redis"
	if stack.RedisModule == "resty.redis" {
		other = "nginx.redis"
		offered = map[string]string{
			"nginx/redis.lua": fmt.Sprintf("return dofile(%q)\n", installed),
			"resty/redis.lua": `error("resty.redis is hidden by TestRedisModuleNames")` + "\n",
		}
	}
	otherDir := t.TempDir()
	for file, text := range offered {
		path := filepath.Join(otherDir, file)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for module, prefix := range map[string]string{stack.RedisModule: "", other: otherDir} {
		t.Run(module, func(t *testing.T) {
			e := startWith(t, testenv.NginxOptions{LuaPathPrefix: prefix})
			if got := e.stats().redisModule; got != module {
				t.Fatalf("the Lua uses %s, want %s", got, module)
			}
			l := newLeaf(t, "module", []string{"module.example.test"}, time.Now().Add(24*time.Hour))
			e.store("module.example.test", l)
			if got := e.mustHandshake("module.example.test"); !got.Equal(l.cert) {
				t.Fatalf("served %q, want the stored certificate", got.Subject.CommonName)
			}
			e.mustHandshake("missing.example.test")
			waitFor(t, "the request for the missing name", func() bool {
				names := e.namesIn()
				return len(names) == 1 && names[0] == "missing.example.test"
			})
		})
	}
}

// flood runs count handshakes, each for a new random name under parent,
// and fails unless each gets the fallback.
func (e *env) flood(parent string, count int) {
	e.t.Helper()
	for i := 0; i < count; i++ {
		name := fmt.Sprintf("%x-%d.%s", time.Now().UnixNano(), i, parent)
		if got := e.mustHandshake(name); !e.isFallback(got) {
			e.t.Fatalf("%s: served %q, want the fallback", name, got.Subject.CommonName)
		}
	}
}

func TestFloodAnsweredByTheNameIndex(t *testing.T) {
	seeded := newLeaf(t, "seeded", []string{"seeded.example.test"}, time.Now().Add(24*time.Hour))
	// Without the first handshake's wait: one handshake after the other
	// stays within request_rate, so each name would be held for the grace
	// and polled (wait_test.go bounds what a flood costs with the wait on).
	e := startSeeded(t, testenv.NginxOptions{LuaConfig: map[string]string{"index_threshold": "5",
		"first_handshake_wait": "0"}}, func(e *env) {
		// Before nginx starts, without a changes entry: only the index's
		// SCAN can know it.
		e.storeUnannounced("seeded.example.test", seeded)
	})
	waitFor(t, "the name index", func() bool { return e.stats().indexReady })
	before, err := e.redis.CommandCalls("hmget")
	if err != nil {
		t.Fatal(err)
	}
	e.flood("flood.example.test", 200)
	after, _ := e.redis.CommandCalls("hmget")
	// Until the node counts 5 misses a second, names go to Redis; then the
	// index answers. Without it every handshake would cost an HMGET.
	if after-before > 40 {
		t.Errorf("200 handshakes for random names ran HMGET %d times; the name index should answer most", after-before)
	}
	// Under the flood: the certificate found by the SCAN is served, and one
	// stored now is served once the changes stream brought its name.
	if got := e.mustHandshake("seeded.example.test"); !got.Equal(seeded.cert) {
		t.Fatalf("during the flood seeded.example.test was served %q", got.Subject.CommonName)
	}
	fresh := newLeaf(t, "fresh", []string{"fresh.example.test"}, time.Now().Add(24*time.Hour))
	e.store("fresh.example.test", fresh)
	fallback := e.nginx.FallbackCert.Subject.CommonName
	e.servedLoop("fresh.example.test", "a new certificate during the flood",
		func(cn string) bool { return cn == "fresh" || cn == fallback },
		func(cn string) bool {
			e.flood("flood.example.test", 10)
			return cn == "fresh"
		})
}

func TestRequestBurstThenRate(t *testing.T) {
	// A rate so low that no token comes back during the test: exactly the
	// burst is recorded.
	e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"request_burst": "5", "request_rate": "0.0001"}})
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("burst%d.example.test", i)
		if got := e.mustHandshake(name); !e.isFallback(got) {
			t.Fatalf("%s: served %q, want the fallback", name, got.Subject.CommonName)
		}
	}
	waitFor(t, "the burst in the requests stream", func() bool { return len(e.namesIn()) >= 5 })
	e.stats() // one more round trip through the worker, after its XADD timers
	if names := e.namesIn(); len(names) != 5 {
		t.Fatalf("%d names recorded for 20 new names with a burst of 5: %v", len(names), names)
	}
}
