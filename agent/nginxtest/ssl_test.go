package nginxtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestHit(t *testing.T) {
	e := start(t, "")
	l := newLeaf(t, "hit.example.test", []string{"hit.example.test"}, time.Now().Add(24*time.Hour))
	e.store("hit.example.test", l)
	offset := e.nginx.ErrorLogSize()
	for i := 0; i < 3; i++ {
		for _, sni := range []string{"hit.example.test", "HIT.Example.Test"} {
			got := e.mustHandshake(sni)
			if !got.Equal(l.cert) {
				t.Fatalf("handshake %d with %q: served %q, want the stored leaf", i, sni, got.Subject.CommonName)
			}
		}
	}
	// TLS 1.2 takes the same path.
	conn, err := tls.Dial("tcp", e.nginx.HTTPSAddr, &tls.Config{
		ServerName: "hit.example.test", InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatalf("TLS 1.2 handshake: %v", err)
	}
	if got := conn.ConnectionState().PeerCertificates[0]; !got.Equal(l.cert) {
		t.Errorf("TLS 1.2: served %q, want the stored leaf", got.Subject.CommonName)
	}
	conn.Close()
	e.settle()
	if names := e.namesIn(); len(names) != 0 {
		t.Fatalf("a hit wrote stream entries: %v", names)
	}
	if lines := e.errorLines(offset); len(lines) != 0 {
		t.Fatalf("errors logged on hits:\n%s", strings.Join(lines, "\n"))
	}
}

func TestMissRecordedOncePerWindow(t *testing.T) {
	e := start(t, "")
	before, err := e.redis.CommandCalls("xadd")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if got := e.mustHandshake("miss.example.test"); !e.isFallback(got) {
			t.Fatalf("handshake %d: a name without a certificate got %q, want the fallback", i, got.Subject.CommonName)
		}
	}
	e.settle() // one more XADD, for the marker
	after, err := e.redis.CommandCalls("xadd")
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 2 {
		t.Errorf("XADD ran %d times for 50 handshakes of one name (plus one marker), want 2", after-before)
	}
	var entries []map[string]any
	for _, m := range e.streamEntries() {
		if m.Values["name"] == "miss.example.test" {
			entries = append(entries, m.Values)
		}
	}
	if len(entries) != 1 {
		t.Fatalf("stream entries for miss.example.test: %v, want exactly one", entries)
	}
	var fields []string
	for f := range entries[0] {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	want := e.docStreamFields()
	sort.Strings(want)
	if strings.Join(fields, ",") != strings.Join(want, ",") {
		t.Errorf("stream entry fields %v, the schema document says %v", fields, want)
	}
	if entries[0]["node"] != testNode {
		t.Errorf("node = %v, want %q (CERTAGENT_NODE)", entries[0]["node"], testNode)
	}
	n, err := e.redis.Client.XLen(context.Background(), e.key("requests")).Result()
	if err != nil || n != 2 {
		t.Errorf("XLEN = %d, %v; want 2", n, err)
	}
}

func TestStoredCertificateServedWithoutReload(t *testing.T) {
	e := start(t, "")
	if got := e.mustHandshake("new.example.test"); !e.isFallback(got) {
		t.Fatalf("served %q before a certificate was stored", got.Subject.CommonName)
	}
	waitFor(t, "the request for new.example.test", func() bool {
		return len(e.namesIn()) == 1
	})
	l := newLeaf(t, "new.example.test", []string{"new.example.test"}, time.Now().Add(24*time.Hour))
	// The miss is cached (negative_ttl); the changes entry written with the
	// record drops it.
	e.store("new.example.test", l)
	waitFor(t, "the stored certificate to be served", func() bool {
		return e.mustHandshake("new.example.test").Equal(l.cert)
	})
}

func TestWildcard(t *testing.T) {
	e := start(t, "")
	wild := newLeaf(t, "*.example.test", []string{"*.example.test"}, time.Now().Add(24*time.Hour))
	exact := newLeaf(t, "b.example.test", []string{"b.example.test"}, time.Now().Add(24*time.Hour))
	e.store("*.example.test", wild)
	e.store("b.example.test", exact)

	if got := e.mustHandshake("a.example.test"); !got.Equal(wild.cert) {
		t.Errorf("a.example.test: served %q, want the wildcard", got.Subject.CommonName)
	}
	if got := e.mustHandshake("b.example.test"); !got.Equal(exact.cert) {
		t.Errorf("b.example.test: served %q, want the exact certificate over the wildcard", got.Subject.CommonName)
	}
	// A wildcard covers one level only, and not the parent itself.
	for _, sni := range []string{"x.a.example.test", "example.test"} {
		if got := e.mustHandshake(sni); !e.isFallback(got) {
			t.Errorf("%s: served %q, want the fallback", sni, got.Subject.CommonName)
		}
	}
	waitFor(t, "the two uncovered names in the stream", func() bool { return len(e.namesIn()) >= 2 })
	e.settle()
	got := e.namesIn()
	sort.Strings(got)
	if strings.Join(got, ",") != "example.test,x.a.example.test" {
		t.Errorf("stream names %v, want only the two uncovered names", got)
	}
}

func TestNoSNI(t *testing.T) {
	e := start(t, "")
	for _, sni := range []string{"", "127.0.0.1", "::1"} { // Go sends no SNI for IP literals
		if got := e.mustHandshake(sni); !e.isFallback(got) {
			t.Errorf("SNI %q: served %q, want the fallback", sni, got.Subject.CommonName)
		}
	}
	e.settle()
	if names := e.namesIn(); len(names) != 0 {
		t.Fatalf("handshakes without SNI wrote stream entries: %v", names)
	}
}

func TestExpiredRecordNotServed(t *testing.T) {
	e := start(t, "")
	old := newLeaf(t, "old.example.test", []string{"old.example.test"}, time.Now().Add(-time.Minute))
	e.store("old.example.test", old)
	if got := e.mustHandshake("old.example.test"); !e.isFallback(got) {
		t.Errorf("an expired record was served (%q)", got.Subject.CommonName)
	}
	// An expired exact record gives way to a valid wildcard.
	wild := newLeaf(t, "*.w.example.test", []string{"*.w.example.test"}, time.Now().Add(24*time.Hour))
	e.store("old.w.example.test", old)
	e.store("*.w.example.test", wild)
	if got := e.mustHandshake("old.w.example.test"); !got.Equal(wild.cert) {
		t.Errorf("old.w.example.test: served %q, want the wildcard over the expired exact record", got.Subject.CommonName)
	}
}

func TestUnusableRecords(t *testing.T) {
	e := start(t, "")
	good := newLeaf(t, "good.example.test", []string{"good.example.test"}, time.Now().Add(24*time.Hour))
	other := newLeaf(t, "other.example.test", []string{"other.example.test"}, time.Now().Add(24*time.Hour))
	notAfter := fmt.Sprint(good.notAfter.Unix())
	records := map[string]map[string]any{
		"badchain.example.test": {"fullchain": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "key": good.keyPEM, "not_after": notAfter},
		"badkey.example.test":   {"fullchain": good.chainPEM, "key": "garbage", "not_after": notAfter},
		"mismatch.example.test": {"fullchain": good.chainPEM, "key": other.keyPEM, "not_after": notAfter},
		"nokey.example.test":    {"fullchain": good.chainPEM, "not_after": notAfter},
		"nodate.example.test":   {"fullchain": good.chainPEM, "key": good.keyPEM},
	}
	for name, fields := range records {
		e.storeFields(name, fields)
	}
	// A record key of another type is an unusable record too, not a Redis
	// failure.
	if err := e.redis.Client.Set(context.Background(), e.key("cert", "name", "string.example.test"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	records["string.example.test"] = nil
	for name := range records {
		offset := e.nginx.ErrorLogSize()
		if got := e.mustHandshake(name); !e.isFallback(got) {
			t.Errorf("%s: served %q, want the fallback", name, got.Subject.CommonName)
		}
		lines := e.errorLines(offset)
		if len(lines) != 1 || !strings.Contains(lines[0], name) {
			t.Errorf("%s: want exactly one error line naming it, got:\n%s", name, strings.Join(lines, "\n"))
		}
		for _, line := range lines {
			if strings.Contains(line, "PRIVATE KEY") || strings.Contains(line, "BEGIN") {
				t.Errorf("%s: the log shows PEM content: %s", name, line)
			}
		}
		// Handshakes right after do not each log again.
		offset = e.nginx.ErrorLogSize()
		for i := 0; i < 5; i++ {
			if got := e.mustHandshake(name); !e.isFallback(got) {
				t.Errorf("%s: served %q, want the fallback", name, got.Subject.CommonName)
			}
		}
		if lines := e.errorLines(offset); len(lines) > 1 {
			t.Errorf("%s: %d error lines for 5 more handshakes, want at most one (negative cache):\n%s",
				name, len(lines), strings.Join(lines, "\n"))
		}
	}
	// Each is recorded in the stream once (per request_window), as a
	// missing name is: the agent finds the stored record corrupt and orders
	// the name again.
	e.settle()
	recorded := map[string]int{}
	for _, name := range e.namesIn() {
		recorded[name]++
	}
	for name := range records {
		if recorded[name] != 1 {
			t.Errorf("%s: recorded %d times in the stream, want once", name, recorded[name])
		}
	}
	if len(recorded) != len(records) {
		t.Errorf("recorded %v, want only the unusable records", recorded)
	}
}

// TestRedisUnavailable: a handshake with Redis gone gets the fallback, the
// outage is logged once by certagent (the socket layer adds its own line per
// try), not once per handshake, and once Redis is back names are served and
// recorded again, with one line that says so.
func TestRedisUnavailable(t *testing.T) {
	e := start(t, "")
	e.mustHandshake("warm.example.test") // leaves a connection in the keepalive pool
	waitFor(t, "the request for warm.example.test", func() bool { return len(e.namesIn()) == 1 })
	// The log is read from before the stop: the worker's background poll of
	// the changes stream may be the first to find Redis gone, and its line
	// is the outage's one line as much as a handshake's would be.
	offset := e.nginx.ErrorLogSize()
	e.redis.Stop()
	if got := e.mustHandshake("down.example.test"); !e.isFallback(got) {
		t.Fatalf("served %q with Redis down, want the fallback", got.Subject.CommonName)
	}
	for i := 0; i < 5; i++ {
		if got := e.mustHandshake("down.example.test"); !e.isFallback(got) {
			t.Fatalf("served %q with Redis down, want the fallback", got.Subject.CommonName)
		}
	}
	var own []string
	for _, line := range e.errorLines(offset) {
		if strings.Contains(line, "certagent:") {
			own = append(own, line)
		}
	}
	if len(own) != 1 || !strings.Contains(own[0], "cannot be reached") || strings.Contains(own[0], "down.example.test") {
		t.Errorf("want certagent's one line for the outage, got:\n%s", strings.Join(own, "\n"))
	}

	e.redis.Start() // empty again: no persistence
	l := newLeaf(t, "down.example.test", []string{"down.example.test"}, time.Now().Add(24*time.Hour))
	e.store("down.example.test", l)
	waitFor(t, "the certificate to be served after Redis came back", func() bool {
		got, err := e.handshake("down.example.test")
		if err != nil {
			t.Fatalf("handshake failed after Redis came back: %v", err)
		}
		return got.Equal(l.cert)
	})
	waitFor(t, "a miss to be recorded after Redis came back", func() bool {
		e.mustHandshake("back.example.test")
		for _, n := range e.namesIn() {
			if n == "back.example.test" {
				return true
			}
		}
		return false
	})
	if back := strings.Count(e.nginx.ErrorLog()[offset:], "answers again"); back != 1 {
		t.Errorf("want one line saying that Redis answers again, got %d", back)
	}
}

func TestFailedRecordIsRetried(t *testing.T) {
	e := start(t, "")
	ctx := context.Background()
	// A string where the stream should be makes XADD fail.
	if err := e.redis.Client.Set(ctx, e.key("requests"), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	offset := e.nginx.ErrorLogSize()
	e.mustHandshake("retry.example.test")
	waitFor(t, "the failed XADD to be logged", func() bool {
		for _, line := range e.errorLines(offset) {
			if strings.Contains(line, "retry.example.test") {
				return true
			}
		}
		return false
	})
	if err := e.redis.Client.Del(ctx, e.key("requests")).Err(); err != nil {
		t.Fatal(err)
	}
	// No handshake again: the worker kept the name and records it itself.
	waitFor(t, "the kept request to be recorded without another handshake", func() bool {
		names := e.namesIn()
		return len(names) == 1 && names[0] == "retry.example.test"
	})
}

// Names seen while Redis refuses writes (out of memory under noeviction) are
// recorded once it takes them again, without their visitors coming back.
func TestNamesSeenDuringRedisOOMAreRecordedAfterIt(t *testing.T) {
	e := start(t, "")
	ctx := context.Background()
	rdb := e.redis.Client
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "maxmemory", "0") })
	offset := e.nginx.ErrorLogSize()
	want := []string{"oom1.example.test", "oom2.example.test", "oom3.example.test"}
	for _, n := range want {
		if c := e.mustHandshake(n); !e.isFallback(c) {
			t.Fatalf("%s: not the fallback", n)
		}
	}
	waitFor(t, "the refused XADD to be logged", func() bool {
		for _, line := range e.errorLines(offset) {
			if strings.Contains(line, "OOM") {
				return true
			}
		}
		return false
	})
	// A retry refused too (the XADD logged above may be the first try): the
	// check below sees a write tried again while Redis still refuses.
	refused, err := e.redis.RejectedCalls("xadd")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a retried XADD refused", func() bool {
		n, err := e.redis.RejectedCalls("xadd")
		return err == nil && n > refused
	})
	if names := e.namesIn(); len(names) != 0 {
		t.Fatalf("recorded while Redis refused writes: %v", names)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the kept names to be recorded without another handshake", func() bool {
		got := map[string]bool{}
		for _, n := range e.namesIn() {
			got[n] = true
		}
		for _, n := range want {
			if !got[n] {
				return false
			}
		}
		return len(got) == len(want)
	})
	for _, m := range e.streamEntries() {
		if m.Values["node"] != testNode {
			t.Errorf("entry %v: node %v, want %s", m.ID, m.Values["node"], testNode)
		}
	}
}
