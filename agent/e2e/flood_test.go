package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/telemetry"
)

// TestRefusalFloodKeepsTheEvents: 5,000 names outside the rules, a 100 KB
// name and node values with CRLF or 100 KB, through the real stream and
// agent, leave the issuance event in the events stream, put no raw copy of
// any of them in it or in the log, and are counted in `certagent status`.
func TestRefusalFloodKeepsTheEvents(t *testing.T) {
	s := startStack(t)
	agent := s.startAgent(t, "--allow", "*.example.test", "--consumer", "flood", "--log-level", "debug")
	ctx := context.Background()
	rdb := s.redis.Client

	const issued = "kept.example.test"
	s.handshake(t, issued)
	waitUntil(t, "the issued event", func() bool { return hasEvent(t, rdb, telemetry.EventIssued, issued) })

	huge := strings.Repeat("a", 100<<10) + ".example.test"
	entries := [][]any{
		{"name", huge, "node", "web-1"},
		{"name", "crlf.example.org", "node", "web-1\r\nlevel=ERROR msg=forged"},
		{"name", "big-node.example.org", "node", strings.Repeat("n", 100<<10)},
	}
	for i := range 5000 {
		entries = append(entries, []any{"name", fmt.Sprintf("scan-%d.example.org", i), "node", "web-1"})
	}
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, values := range entries {
			p.XAdd(ctx, &redis.XAddArgs{Stream: "certagent:requests", Values: values})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.waitHandled(t, 3*time.Minute)

	if !hasEvent(t, rdb, telemetry.EventIssued, issued) {
		t.Error("the flood pushed the issued event out of the events stream")
	}
	msgs, err := rdb.XRange(ctx, "certagent:events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) > 20 {
		t.Errorf("%d events after a flood of refused names, want only the issuance's", len(msgs))
	}
	for _, m := range msgs {
		if data := fmt.Sprint(m.Values); len(data) > 4096 || strings.Contains(data, "forged") {
			t.Errorf("event of %d bytes with a raw copy of a stream field: %.200s", len(data), data)
		}
	}

	out, errOut, code := s.cli(t, "status")
	if code != 0 || !strings.Contains(out, "refused names:") || !strings.Contains(out, "5002 (last") ||
		!strings.Contains(out, "no rule allows, 1 (last") {
		t.Errorf("status exited %d (%s):\n%s", code, errOut, out)
	}

	// The log holds the refusals at debug level, bounded and one a line.
	log, err := os.Open(agent.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	sc := bufio.NewScanner(log)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	refusals, longest, hugeName, crlfNode := 0, 0, false, false
	for sc.Scan() {
		line := sc.Text()
		longest = max(longest, len(line))
		if strings.Contains(line, "name refused") {
			refusals++
		}
		hugeName = hugeName || strings.Contains(line, "a…[102413 bytes]")
		crlfNode = crlfNode || strings.Contains(line, `node="web-1\\x0d\\x0alevel=ERROR\\x20msg=forged"`)
		if strings.HasPrefix(line, "msg=forged") || strings.Contains(line, strings.Repeat("a", 1000)) {
			t.Errorf("raw stream field in the log: %.200q", line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !hugeName || !crlfNode {
		t.Errorf("the log lacks the escaped, cut 100 KB name (%v) or the escaped CRLF node (%v)", hugeName, crlfNode)
	}
	if refusals < 5003 || longest > 2048 {
		t.Errorf("log: %d refusals, longest line %d bytes; want every refusal, lines of at most 2 KB", refusals, longest)
	}
}

func hasEvent(t *testing.T, rdb *redis.Client, typ, name string) bool {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), "certagent:events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Values["type"] == typ && m.Values["name"] == name {
			return true
		}
	}
	return false
}
