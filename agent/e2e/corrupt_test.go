package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// corruptName is the name a test gives the record it damages with c.
func corruptName(c testenv.Corruption) string {
	return strings.ToLower(strings.NewReplacer(" ", "-", "'", "").Replace(c.Name)) + ".example.test"
}

// corrupt damages the record of name with c and, as a write by the agent
// would, appends a changes entry, so that nginx drops what it cached and
// reads the damaged record on the next handshake.
func (s *stack) corrupt(t *testing.T, c testenv.Corruption, name string) {
	t.Helper()
	ctx := context.Background()
	keys := store.Keys{}
	if err := c.Apply(ctx, s.redis.Client, keys.Cert(name)); err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	err := s.redis.Client.XAdd(ctx, &redis.XAddArgs{Stream: keys.Changes(),
		Values: []any{"name", name, "op", "put", "fingerprint", ""}}).Err()
	if err != nil {
		t.Fatal(err)
	}
}

type listed struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// Every kind of corrupt record is `corrupt`, with why, in list --check, show and
// status, as text and JSON, a key of the wrong type included (named, and
// not fatal to list); no output shows a private key; nginx serves the
// fallback for each.
func TestCorruptRecordsInListShowAndStatus(t *testing.T) {
	s := startStack(t)
	corruptions := testenv.Corruptions(t)
	args := []string{"issue", "good.example.test"}
	for _, c := range corruptions {
		args = append(args, corruptName(c))
	}
	if _, errOut, code := s.cli(t, args...); code != 0 {
		t.Fatalf("issue exited %d: %s", code, errOut)
	}
	for _, c := range corruptions {
		s.corrupt(t, c, corruptName(c))
	}

	out, errOut, code := s.cli(t, "list", "--check", "--json")
	if code != 0 {
		t.Fatalf("list --check --json exited %d: %s", code, errOut)
	}
	var views []listed
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	got := map[string]listed{}
	for _, v := range views {
		got[v.Name] = v
	}
	if v := got["good.example.test"]; v.Status != "valid" || v.Reason != "" {
		t.Errorf("the good record: %+v", v)
	}
	for _, c := range corruptions {
		name := corruptName(c)
		if v := got[name]; v.Status != "corrupt" || !strings.Contains(v.Reason, c.Reason) {
			t.Errorf("list, %s: %+v, want corrupt about %q", c.Name, v, c.Reason)
		}
	}
	if v := got[corruptName(corruptions[len(corruptions)-1])]; !strings.Contains(v.Reason, "certagent:cert:wrong-type.example.test") {
		t.Errorf("the key of the wrong type is not named: %q", v.Reason)
	}
	table, _, code := s.cli(t, "list", "--check")
	t.Logf("certagent list --check:\n%s", table)
	if code != 0 || strings.Count(table, " corrupt ") != len(corruptions) || !strings.Contains(table, "PROBLEM") {
		t.Errorf("list exited %d:\n%s", code, table)
	}
	// Without --check, list reads no chain and no key: it finds what the
	// fields alone tell, the key that is not a hash.
	out, _, _ = s.cli(t, "list", "--json")
	if err := json.Unmarshal([]byte(out), &views); err != nil || len(views) != len(corruptions)+1 {
		t.Errorf("list --json: %v\n%s", err, out)
	}
	for _, v := range views {
		if want := v.Name == corruptName(corruptions[len(corruptions)-1]); want != (v.Status == "corrupt") {
			t.Errorf("list without --check: %+v", v)
		}
	}
	out, _, _ = s.cli(t, "list", "--status", "corrupt", "--json")
	if err := json.Unmarshal([]byte(out), &views); err != nil || len(views) != len(corruptions) {
		t.Errorf("list --status corrupt: %v\n%s", err, out)
	}

	for _, c := range corruptions {
		name := corruptName(c)
		out, errOut, code := s.cli(t, "show", "--json", name)
		var v listed
		if err := json.Unmarshal([]byte(out), &v); err != nil || code != 1 || v.Status != "corrupt" || !strings.Contains(v.Reason, c.Reason) {
			t.Errorf("show --json %s: exit %d, %+v (%v) %s", name, code, v, err, errOut)
		}
		text, errOut, code := s.cli(t, "show", name)
		if code != 1 || !strings.Contains(text, "status:") || !strings.Contains(text+errOut, c.Reason) {
			t.Errorf("show %s: exit %d:\n%s%s", name, code, text, errOut)
		}
		table += text + errOut
		if chain := s.handshake(t, name); !isFallback(s, chain) && !c.NginxServes {
			t.Errorf("%s: nginx serves %s, want the fallback", c.Name, chain[0].Subject.CommonName)
		}
	}

	out, _, code = s.cli(t, "status", "--check", "--json")
	var st struct {
		Certificates int64 `json:"certificates"`
		Corrupt      int64 `json:"corrupt"`
		Records      []struct {
			Name  string `json:"name"`
			Error string `json:"error"`
		} `json:"corrupt_records"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || st.Corrupt != int64(len(corruptions)) ||
		len(st.Records) != len(corruptions) || st.Records[0].Error == "" {
		t.Errorf("status --json: exit %d, %v: %s", code, err, out)
	}
	text, _, code := s.cli(t, "status", "--check")
	t.Logf("certagent status --check:\n%s", text)
	if code != 0 || !strings.Contains(text, fmt.Sprintf("%d corrupt", len(corruptions))) || !strings.Contains(text, "corrupt records") {
		t.Errorf("status exited %d:\n%s", code, text)
	}
	if strings.Contains(table+out+text, "PRIVATE KEY") {
		t.Error("the CLI shows a private key")
	}

	// An index of the wrong type is named and left out; the list goes on.
	failures := store.Keys{}.RenewalFailures()
	if err := s.redis.Client.Set(context.Background(), failures, "a string", 0).Err(); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = s.cli(t, "list", "--json")
	if err := json.Unmarshal([]byte(out), &views); err != nil || code != 0 || len(views) != len(corruptions)+1 ||
		!strings.Contains(errOut, failures) {
		t.Errorf("list with %s of the wrong type: exit %d, %d entries (%v), stderr %q", failures, code, len(views), err, errOut)
	}
}

// A corrupt record that nginx meets is recorded in the requests stream and
// replaced by the running agent without anyone asking; nginx serves the
// fallback meanwhile.
func TestCorruptRecordReportedByNginxIsReplaced(t *testing.T) {
	// A short request window: the name was recorded when it was first
	// visited, seconds before it is damaged.
	s := startStackLua(t, map[string]string{"first_handshake_wait": "0", "request_window": "1"})
	// Checked once at the start, then not within the test: only nginx's
	// report can bring the order.
	s.runDaemon(t, "--allow", "*.example.test", "--check-interval", "1h")
	for _, c := range testenv.Corruptions(t) {
		if c.NginxServes {
			continue // the periodic check's case
		}
		t.Run(strings.ReplaceAll(c.Name, " ", "_"), func(t *testing.T) {
			name := corruptName(c)
			first := s.waitServed(t, name, 60*time.Second, "first issuance", func(chain []*x509.Certificate) bool {
				return !isFallback(s, chain)
			})
			time.Sleep(1100 * time.Millisecond) // past the request window of the first visit
			s.corrupt(t, c, name)
			// Once nginx has read the changes entry, the handshake that
			// finds the record damaged gets the fallback (and reports it).
			s.waitServed(t, name, 30*time.Second, "the fallback for the corrupt record", func(chain []*x509.Certificate) bool {
				return isFallback(s, chain)
			})
			got := s.waitServed(t, name, 60*time.Second, "replacement", func(chain []*x509.Certificate) bool {
				return !isFallback(s, chain) && !chain[0].Equal(first[0])
			})
			if err := s.verifies(t, got, name); err != nil {
				t.Errorf("the replacement does not verify: %v", err)
			}
			if v, ok := s.show(t, name); !ok || v.Status != "valid" {
				t.Errorf("show after the replacement: %+v", v)
			}
		})
	}
}

// A corrupt record nobody visits is found by the agents' periodic check and
// replaced through the renewal schedule, with one order for each across the
// two agents that both find it.
func TestCorruptRecordFoundByThePeriodicCheckIsReplaced(t *testing.T) {
	s := startStack(t)
	corruptions := testenv.Corruptions(t)
	var names []string
	for _, c := range corruptions {
		names = append(names, corruptName(c))
	}
	if _, errOut, code := s.cli(t, append([]string{"issue"}, names...)...); code != 0 {
		t.Fatalf("issue exited %d: %s", code, errOut)
	}
	before := map[string]shown{}
	for i, c := range corruptions {
		before[names[i]], _ = s.show(t, names[i])
		s.corrupt(t, c, names[i])
	}
	issued := s.pebble.OrdersCreated(t)
	logPath := s.runDaemon(t, "--allow", "*.example.test", "--check-interval", "2s")
	s.runDaemon(t, "--allow", "*.example.test", "--check-interval", "2s", "--consumer", "e2e-second")
	for _, name := range names {
		deadline := time.Now().Add(90 * time.Second)
		for {
			v, ok := s.show(t, name)
			if ok && v.Status == "valid" && v.Fingerprint != before[name].Fingerprint {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(logPath)
				t.Fatalf("%s not replaced within 90 s (show: %+v)\nagent log:\n%s", name, v, tail(string(log), 8000))
			}
			time.Sleep(300 * time.Millisecond)
		}
		if err := s.verifies(t, s.handshake(t, name), name); err != nil {
			t.Errorf("%s: the served replacement does not verify: %v", name, err)
		}
	}
	time.Sleep(3 * time.Second) // two more checks by each agent
	if orders := s.pebble.OrdersCreated(t) - issued; orders != len(names) {
		t.Errorf("%d orders to replace %d corrupt records, want one each", orders, len(names))
	}
	// No handshake met them damaged: the check alone found them.
	if n := s.redis.Client.XLen(context.Background(), store.Keys{}.Requests()).Val(); n != 0 {
		t.Errorf("%d entries in the requests stream, want none", n)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
