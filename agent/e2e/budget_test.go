package e2e

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// An order cut off by SIGKILL gives its certificate slot back once it can no
// longer be running: with a budget of one certificate for new names under the
// domain, the killed order's name is issued after the restart, instead of
// waiting a week for the slot its dead order kept.
func TestKilledOrderGivesItsSlotBack(t *testing.T) {
	s := startFaultStack(t, faultOptions{retraffic: true})
	st := store.New(s.redis.Client, store.Keys{})
	ctx := context.Background()
	const name = "cut.slot.test"

	// Pebble validates name against 127.0.0.3, where a listener accepts and
	// never answers: the order stays in flight until the agent is killed.
	_, port, err := net.SplitHostPort(s.nginx.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	hang, err := net.Listen("tcp", "127.0.0.3:"+port)
	if err != nil {
		t.Fatalf("listening on 127.0.0.3 (loopback): %v", err)
	}
	var accepted atomic.Int32
	go func() {
		for {
			conn, err := hang.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			t.Cleanup(func() { conn.Close() })
		}
	}()
	t.Cleanup(func() { hang.Close() })
	s.pebble.SetDNS(t, "/add-a", map[string]any{"host": name + ".", "addresses": []string{"127.0.0.3"}})

	// Two certificates per domain, a tenth of them kept for renewals: one
	// for new names. The slot is held for the order timeout plus the lease.
	a := s.newAgent(t, "agent-0", "--allow", "*.slot.test", "--limit-certs", "2",
		"--order-timeout", "6s", "--lock-ttl", "3s", "--reclaim-idle", "2s", "--retry-first", "2s")
	s.request(t, []string{name})
	waitUntil(t, "Pebble validating against the hanging listener", func() bool { return accepted.Load() > 0 })
	a.kill(t)
	killed := time.Now()

	// The name can be validated now; the restarted agent takes its entry up.
	s.pebble.SetDNS(t, "/clear-a", map[string]any{"host": name + "."})
	hang.Close()
	a.start(t)
	took := s.waitAllStored(t, st, []string{name}, 90*time.Second)
	t.Logf("%s issued %s after its first order was killed (%s after the restart)",
		name, time.Since(killed).Round(100*time.Millisecond), took.Round(100*time.Millisecond))

	// The budget is in force: the issued certificate holds the one slot.
	s.request(t, []string{"next.slot.test"})
	waitUntil(t, "next.slot.test deferred by the spent budget", func() bool {
		f, err := st.GetFailure(ctx, "next.slot.test")
		return err == nil && strings.Contains(f.LastError, "budget")
	})
}
