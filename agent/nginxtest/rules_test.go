package nginxtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/store"
)

// The status series of names judged in nginx (docs/lua.md).
const (
	judgedNoRule   = `certagent_nginx_judged_total{reason="no_rule"}`
	judgedRefused  = `certagent_nginx_judged_total{reason="refused"}`
	skippedNoAgent = `certagent_nginx_waits_skipped_total{reason="no_agent"}`
	namesRecorded  = "certagent_nginx_names_recorded_total"
)

// publishRules writes the rules record as an agent publishes it (the fields
// of the schema document's rules row) and announces the version in the
// changes stream.
func (e *env) publishRules(version int, static, allow, ask string) {
	e.t.Helper()
	ctx := context.Background()
	_, err := e.redis.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, e.key("rules"), "version", version, "static", static, "allow", allow, "ask", ask)
		p.XAdd(ctx, &redis.XAddArgs{Stream: e.key("changes"), MaxLen: 1000, Approx: true,
			Values: []any{"op", "rules", "version", strconv.Itoa(version)}})
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// beat sets the agents' heartbeat for ttl, as a running agent does.
func (e *env) beat(ttl time.Duration) {
	e.t.Helper()
	if err := e.redis.Client.Set(context.Background(), e.key("alive"), "test-agent", ttl).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// handshakeCommands counts the Redis commands a handshake can send: lookups,
// marks, records, the heartbeat and the rules. The background reads of the
// changes stream and of the name index are not among them.
func (e *env) handshakeCommands() int64 {
	return e.commands("hmget", "get", "xadd", "pttl")
}

// startJudging starts nginx (the wait on, a 2 s grace so that a held name
// stands apart) on a Redis where an agent has published rules and beats for
// beatTTL, and returns once the worker has read the rules and built the
// name index, and the node has read the changes stream: its first read
// starts a new log, and the worker that finds it reads the rules again
// (hmget and pttl), which a loaded machine could otherwise let fall among a
// test's handshakes.
func startJudging(t *testing.T, static string, beatTTL time.Duration, seed func(e *env)) *env {
	t.Helper()
	e := startWaitSeeded(t, map[string]string{"first_handshake_wait": "10", "first_handshake_grace": "2"}, "",
		func(e *env) {
			e.publishRules(1, static, "", "")
			e.beat(beatTTL)
			if seed != nil {
				seed(e)
			}
		})
	waitFor(t, "the worker to read the rules and build the name index", func() bool {
		return e.commands("hmget") >= 1 && e.stats().indexReady
	})
	e.waitChangesRead()
	waitFor(t, "the worker to read the rules again after the node's first read of the changes", func() bool {
		return e.commands("hmget") >= 2
	})
	return e
}

// TestNamesOutsideTheRulesCostNothing: with published rules *.allowed.test,
// a thousand random names outside them get the fallback with no stream
// entry, no hold and no Redis command; a stored certificate outside the
// rules is still served, and a name inside them is still recorded and held
// until its certificate is stored.
func TestNamesOutsideTheRulesCostNothing(t *testing.T) {
	const stored, wildcard = "kept.outside.test", "*.wild.outside.test"
	keptLeaf := newLeaf(t, stored, []string{stored}, time.Now().Add(24*time.Hour))
	wildLeaf := newLeaf(t, wildcard, []string{wildcard}, time.Now().Add(24*time.Hour))
	e := startJudging(t, "*.allowed.test", time.Minute, func(e *env) {
		e.store(stored, keptLeaf)
		e.store(wildcard, wildLeaf)
	})

	before := e.handshakeCommands()
	const n = 1000
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("r%x.outside%d.test", rand.Uint64(), i%10)
		if i%100 == 0 {
			name = "allowed.test" // the parent itself: *.allowed.test does not cover it
		}
		if c := e.mustHandshake(name); !e.isFallback(c) {
			t.Fatalf("%s: served %q, want the fallback", name, c.Subject.CommonName)
		}
	}
	if d := e.handshakeCommands() - before; d != 0 {
		t.Errorf("%d names outside the rules sent %d Redis commands, want 0", n, d)
	}
	if entries := e.streamEntries(); len(entries) != 0 {
		t.Errorf("%d stream entries, want 0: %v", len(entries), entries)
	}
	e.wantCounters("after the names outside the rules", map[string]float64{judgedNoRule: n, waits: 0,
		namesRecorded: 0, "certagent_nginx_fallback_total": n})

	if got := e.mustHandshake(stored); !got.Equal(keptLeaf.cert) {
		t.Errorf("%s: a stored certificate outside the rules got %q, want it served", stored, got.Subject.CommonName)
	}
	for _, name := range []string{"a.wild.outside.test", "B.Wild.Outside.Test"} {
		if got := e.mustHandshake(name); !got.Equal(wildLeaf.cert) {
			t.Errorf("%s: a stored wildcard outside the rules got %q, want it served", name, got.Subject.CommonName)
		}
	}

	const allowed = "shop.allowed.test"
	l := newLeaf(t, allowed, []string{allowed}, time.Now().Add(24*time.Hour))
	done := e.storeAfter(300*time.Millisecond, allowed, l)
	if got := e.mustHandshake(allowed); !got.Equal(l.cert) {
		t.Errorf("%s: the first handshake got %q, want the certificate stored while it was held", allowed, got.Subject.CommonName)
	}
	done()
	if names := e.namesIn(); len(names) != 1 || names[0] != allowed {
		t.Errorf("stream entries %v, want only %s", names, allowed)
	}
	e.wantCounters("after the allowed name", map[string]float64{waits: 1, waitCert: 1})
}

// TestRulesChangeWithoutReload: a rule added to the published rules makes a
// name issuable at the next handshake (recorded and held), announced
// through the changes stream; removed, it stops that.
func TestRulesChangeWithoutReload(t *testing.T) {
	e := startJudging(t, "*.allowed.test", time.Minute, nil)

	const first = "a.later.test"
	if c := e.mustHandshake(first); !e.isFallback(c) {
		t.Fatalf("before the rule: %q, want the fallback", c.Subject.CommonName)
	}
	e.wantCounters("before the rule", map[string]float64{judgedNoRule: 1, waits: 0})

	reads := e.commands("hmget")
	e.publishRules(2, "*.allowed.test", "*.later.test", "")
	waitFor(t, "the worker to read the new rules", func() bool { return e.commands("hmget") > reads })
	l := newLeaf(t, first, []string{first}, time.Now().Add(24*time.Hour))
	done := e.storeAfter(300*time.Millisecond, first, l)
	if got := e.mustHandshake(first); !got.Equal(l.cert) {
		t.Errorf("after the rule: the next handshake got %q, want the certificate stored while it was held", got.Subject.CommonName)
	}
	done()
	e.wantCounters("after the rule", map[string]float64{waits: 1, waitCert: 1})
	if names := e.namesIn(); len(names) != 1 || names[0] != first {
		t.Errorf("stream entries %v, want %s", names, first)
	}

	reads = e.commands("hmget")
	e.publishRules(3, "*.allowed.test", "", "")
	waitFor(t, "the worker to read the rules without it", func() bool { return e.commands("hmget") > reads })
	before := e.handshakeCommands()
	if c := e.mustHandshake("b.later.test"); !e.isFallback(c) {
		t.Fatalf("after the removal: %q, want the fallback", c.Subject.CommonName)
	}
	if d := e.handshakeCommands() - before; d != 0 {
		t.Errorf("after the removal: %d Redis commands, want 0", d)
	}
	e.wantCounters("after the removal", map[string]float64{judgedNoRule: 2, waits: 1})

	// An ask URL may allow every name: nothing is judged out.
	reads = e.commands("hmget")
	e.publishRules(4, "*.allowed.test", "", "*")
	waitFor(t, "the worker to read the rules with the ask URL", func() bool { return e.commands("hmget") > reads })
	e.mustHandshake("c.later.test")
	waitFor(t, "c.later.test in the stream", func() bool { return len(e.namesIn()) == 2 })
}

// TestNoAgentAliveNoHold: while the agents' heartbeat is missing, a name the
// rules allow is recorded but not held; once an agent beats again, within
// about a second, handshakes are held again.
func TestNoAgentAliveNoHold(t *testing.T) {
	e := startJudging(t, "*.allowed.test", 1500*time.Millisecond, nil)
	time.Sleep(2 * time.Second) // the beat read at the start runs out

	c, took := e.timedHandshake("gone.allowed.test")
	if !e.isFallback(c) {
		t.Fatalf("no agent alive: %q, want the fallback", c.Subject.CommonName)
	}
	if took >= 2*time.Second {
		t.Errorf("no agent alive: the handshake took %s, as long as the grace (2 s): it was held", took)
	}
	waitFor(t, "the name in the stream", func() bool { return len(e.namesIn()) == 1 })
	e.wantCounters("no agent alive", map[string]float64{waits: 0, skippedNoAgent: 1})

	// Handshakes for names that may be held read the heartbeat at most
	// once a second, never each.
	pttl := e.commands("pttl")
	start := time.Now()
	for i := 0; i < 20; i++ {
		e.mustHandshake(fmt.Sprintf("n%d.allowed.test", i))
	}
	reads := e.commands("pttl") - pttl
	if limit := int64(time.Since(start)/time.Second) + 1; reads > limit {
		t.Errorf("20 handshakes in %s read the heartbeat %d times, want at most %d", time.Since(start), reads, limit)
	}

	e.beat(time.Minute)
	i := 0
	waitFor(t, "a held handshake once an agent beats again", func() bool {
		i++
		back := fmt.Sprintf("back%d.allowed.test", i)
		l := newLeaf(t, back, []string{back}, time.Now().Add(24*time.Hour))
		e.mark(back, "issuing")
		done := e.storeAfter(200*time.Millisecond, back, l)
		got := e.mustHandshake(back)
		done()
		return got.Equal(l.cert)
	})
	t.Logf("held again at the %d. handshake after the agent's return", i)
}

// TestRefusalRememberedAndNotAskedAgain: a name the rules allow but an agent
// refused costs one round trip (and, out of band, its record in the stream,
// as the refusal may predate the rules): the handshakes after it are
// answered without Redis, until the rules change.
func TestRefusalRememberedAndNotAskedAgain(t *testing.T) {
	e := startJudging(t, "*.allowed.test", time.Minute, nil)
	const name = "refused.allowed.test"
	e.mark(name, "refused preflight: no address")
	before := e.handshakeCommands()
	if c := e.mustHandshake(name); !e.isFallback(c) {
		t.Fatalf("%q, want the fallback", c.Subject.CommonName)
	}
	waitFor(t, "the refused name in the stream", func() bool { return len(e.namesIn()) == 1 })
	first := e.handshakeCommands() - before
	for i := 0; i < 10; i++ {
		e.mustHandshake(name)
	}
	if d := e.handshakeCommands() - before - first; d != 0 {
		t.Errorf("10 handshakes after the refusal sent %d Redis commands, want 0", d)
	}
	if names := e.namesIn(); names[0] != name {
		t.Errorf("stream entries %v, want %s once", names, name)
	}
	e.wantCounters("after the refusal", map[string]float64{waits: 0, judgedRefused: 10})

	// A refusal the wait sees: the first poll ends the wait soon after it.
	const later = "later.allowed.test"
	go func() {
		time.Sleep(20 * time.Millisecond)
		e.mark(later, "refused policy")
	}()
	if c := e.mustHandshake(later); !e.isFallback(c) {
		t.Fatalf("%q, want the fallback", c.Subject.CommonName)
	}
	e.wantCounters("after the refusal seen by the wait", map[string]float64{waits: 1, waitRefused: 1})
	e.mustHandshake(later)
	e.wantCounters("after the remembered refusal", map[string]float64{waits: 1, judgedRefused: 11})

	// New rules void the memory: the name may be held again (and is
	// recorded again, under the new rules).
	reads := e.commands("hmget")
	e.publishRules(2, "*.allowed.test", "", "")
	waitFor(t, "the worker to read the new rules", func() bool { return e.commands("hmget") > reads })
	e.redis.Client.Del(context.Background(), e.key("issuing", "name", name))
	l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
	e.mark(name, "issuing")
	done := e.storeAfter(300*time.Millisecond, name, l)
	if got := e.mustHandshake(name); !got.Equal(l.cert) {
		t.Errorf("after new rules: %q, want the certificate stored while the handshake was held", got.Subject.CommonName)
	}
	done()
	e.wantCounters("after new rules", map[string]float64{waits: 2, judgedRefused: 11})
}

// TestNewRulesRecordANameAgain: a name recorded and refused under the old
// rules (here an ask URL's no) is recorded again at its next handshake once
// new rules are published (the operator added it to the allowlist), not a
// whole request_window later: no agent would otherwise hear of it again.
func TestNewRulesRecordANameAgain(t *testing.T) {
	e := startJudging(t, "", time.Minute, func(e *env) { e.publishRules(1, "", "", "*") })
	const name = "asked.other.test"
	e.mustHandshake(name)
	waitFor(t, "the name in the stream", func() bool { return len(e.namesIn()) == 1 })
	e.mark(name, "refused policy: the ask URL said no")
	e.mustHandshake(name)
	if n := len(e.namesIn()); n != 1 {
		t.Fatalf("under the same rules the name was recorded %d times, want once", n)
	}

	reads := e.commands("hmget")
	e.publishRules(2, "", name, "*")
	waitFor(t, "the worker to read the new rules", func() bool { return e.commands("hmget") > reads })
	e.mustHandshake(name)
	waitFor(t, "the name recorded again under the new rules", func() bool { return len(e.namesIn()) == 2 })
}

// TestNginxJudgesByTheUnionOfTheAgentsRules: two agents running with
// different rules (a rolling deploy) publish through the agent's store; a
// name only the agent that published first allows is still recorded and
// held, not refused in nginx, and a name neither allows is.
func TestNginxJudgesByTheUnionOfTheAgentsRules(t *testing.T) {
	e := startWaitSeeded(t, map[string]string{"first_handshake_wait": "10", "first_handshake_grace": "2"}, "",
		func(e *env) {
			st := store.New(e.redis.Client, store.Keys{Prefix: e.prefix})
			for agent, rule := range map[string]string{"agent-b": "*.b.test", "agent-a": "*.a.test"} {
				if _, err := st.PublishRules(context.Background(), store.PublishedRules{Agent: agent, Static: []string{rule}}); err != nil {
					e.t.Fatal(err)
				}
			}
			e.beat(time.Minute)
		})
	waitFor(t, "the worker to read the rules and build the name index", func() bool {
		return e.commands("hmget") >= 1 && e.stats().indexReady
	})

	if c := e.mustHandshake("x.c.test"); !e.isFallback(c) {
		t.Fatalf("x.c.test: served %q, want the fallback", c.Subject.CommonName)
	}
	e.wantCounters("after a name no agent allows", map[string]float64{judgedNoRule: 1, waits: 0})

	for i, name := range []string{"shop.b.test", "shop.a.test"} {
		l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
		done := e.storeAfter(300*time.Millisecond, name, l)
		if got := e.mustHandshake(name); !got.Equal(l.cert) {
			t.Errorf("%s: the first handshake got %q, want the certificate stored while it was held", name, got.Subject.CommonName)
		}
		done()
		e.wantCounters("after "+name, map[string]float64{judgedNoRule: 1, waits: float64(i + 1), waitCert: float64(i + 1)})
	}
	if names := e.namesIn(); len(names) != 2 {
		t.Errorf("stream entries %v, want shop.b.test and shop.a.test", names)
	}
}
