package e2e

// nginx judges names itself by the rules the agents publish (docs/redis-schema.md,
// rules and alive): through real nginx, Redis, Pebble and the agent.

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// The status series of names judged in nginx (lua/certagent/stats.lua).
const (
	metricJudged  = "certagent_nginx_judged_total"        // {reason}: neither recorded nor held
	metricSkipped = "certagent_nginx_waits_skipped_total" // {reason="no_agent"}
)

// refusingAskURL is an ask URL that refuses every name (403).
func refusingAskURL(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// redisCalls sums INFO commandstats calls of cmds.
func redisCalls(t *testing.T, r *testenv.Redis, cmds ...string) int64 {
	t.Helper()
	var sum int64
	for _, c := range cmds {
		n, err := r.CommandCalls(c)
		if err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}

// waitRulesRead waits until nginx has read the rules again after reads: each
// read of them sends one PTTL of the heartbeat, which nothing else does
// while no handshake needs the heartbeat and no name is judged by the agent.
func waitRulesRead(t *testing.T, s *stack, reads int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for redisCalls(t, s.redis, "pttl") <= reads {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for nginx to read the published rules")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rulesReads returns how often nginx has read the rules, once its worker
// has made its two first reads (the stack's nginx has one worker): the read
// at its start, and the one it makes when it finds the new log that the
// node's first read of the changes stream starts. Counted from the first
// alone, the second could pass for the read of rules published later.
func rulesReads(t *testing.T, s *stack) int64 {
	t.Helper()
	waitRulesRead(t, s, 1)
	return redisCalls(t, s.redis, "pttl")
}

// TestNginxJudgesByThePublishedRules: with the agent's rules *.allowed.test
// published, a thousand random names outside them cause no stream entry, no
// hold and no Redis command; an allowed name is still issued on its first
// handshake; an allowlist change is followed without a reload; and with no
// agent alive a new name gets the fallback without a hold.
func TestNginxJudgesByThePublishedRules(t *testing.T) {
	s := startWaitStack(t, waitConfig(waitSeconds, "first_handshake_grace", issuingGrace))
	reads := rulesReads(t, s)
	agent := s.startAgent(t, "--allow", "*.allowed.test", "--consumer", "judge")
	waitRulesRead(t, s, reads)

	// Names outside the rules.
	nginxCommands := []string{"hmget", "get", "xadd", "pttl"}
	before := redisCalls(t, s.redis, nginxCommands...)
	const n = 1000
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("r%x.outside%d.test", rand.Uint64(), i%10)
		chain, err := handshakeAt(s.nginx.HTTPSAddr, name)
		if err != nil {
			t.Fatalf("handshake for %s: %v", name, err)
		}
		if !isFallback(s, chain) {
			t.Fatalf("%s: served %v, want the fallback", name, chain[0].DNSNames)
		}
	}
	if d := redisCalls(t, s.redis, nginxCommands...) - before; d != 0 {
		t.Errorf("%d names outside the rules: %d Redis commands (%v), want 0", n, d, nginxCommands)
	}
	st := statusOf(t, s.nginx)
	if got := sum(st, metricJudged, `reason="no_rule"`); got != n {
		t.Errorf("%s{reason=no_rule} = %v, want %d", metricJudged, got, n)
	}
	if got := sum(st, metricWaits); got != 0 {
		t.Errorf("%v handshakes held, want 0", got)
	}
	if got := s.redis.Client.XLen(t.Context(), "certagent:requests").Val(); got != 0 {
		t.Errorf("%d stream entries, want 0", got)
	}

	// An allowed name: issued on its first handshake.
	chain, took := timedHandshake(t, s.nginx.HTTPSAddr, "first.allowed.test")
	verifiesAgainstPebble(t, s, chain, "first.allowed.test")
	t.Logf("first.allowed.test: its certificate on the first handshake after %s", took.Round(time.Millisecond))

	// An allowlist change: issuable at the next handshake, without a reload.
	reads = redisCalls(t, s.redis, "pttl")
	if _, errOut, code := s.cli(t, "allow", "add", "*.live.test"); code != 0 {
		t.Fatalf("allow add exited %d: %s", code, errOut)
	}
	waitRulesRead(t, s, reads)
	chain, _ = timedHandshake(t, s.nginx.HTTPSAddr, "a.live.test")
	verifiesAgainstPebble(t, s, chain, "a.live.test")
	reads = redisCalls(t, s.redis, "pttl")
	if _, errOut, code := s.cli(t, "allow", "add", "exact.other.test"); code != 0 {
		t.Fatalf("allow add exited %d: %s", code, errOut)
	}
	waitRulesRead(t, s, reads)
	chain, _ = timedHandshake(t, s.nginx.HTTPSAddr, "exact.other.test")
	verifiesAgainstPebble(t, s, chain, "exact.other.test")

	reads = redisCalls(t, s.redis, "pttl")
	if _, errOut, code := s.cli(t, "allow", "rm", "*.live.test"); code != 0 {
		t.Fatalf("allow rm exited %d: %s", code, errOut)
	}
	waitRulesRead(t, s, reads)
	held := sum(statusOf(t, s.nginx), metricWaits)
	chain, _ = timedHandshake(t, s.nginx.HTTPSAddr, "b.live.test")
	if !isFallback(s, chain) {
		t.Fatalf("b.live.test after the rule was removed: %v, want the fallback", chain[0].DNSNames)
	}
	if got := sum(statusOf(t, s.nginx), metricWaits); got != held {
		t.Errorf("b.live.test after the rule was removed was held")
	}

	// No agent alive: a new allowed name gets the fallback, not held.
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-agent.exited
	time.Sleep(3500 * time.Millisecond) // the last heartbeat runs out (3 s)
	st = statusOf(t, s.nginx)
	held = sum(st, metricWaits)
	chain, took = timedHandshake(t, s.nginx.HTTPSAddr, "dead.allowed.test")
	if !isFallback(s, chain) {
		t.Fatalf("no agent alive: %v, want the fallback", chain[0].DNSNames)
	}
	st = statusOf(t, s.nginx)
	if got := sum(st, metricWaits); got != held {
		t.Errorf("no agent alive: the handshake was held (%s)", took)
	}
	if got := sum(st, metricSkipped, `reason="no_agent"`); got != 1 {
		t.Errorf("%s{reason=no_agent} = %v, want 1", metricSkipped, got)
	}
}
