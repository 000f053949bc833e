package nginxtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// TestNginxRunsAsTheLeastPrivilegeUser runs nginx as the user of
// docs/redis-acl.md (the documented line itself): it serves certificates,
// answers challenges, records names, reads issuing marks (the first
// handshake's wait), follows the changes stream, reads the published rules
// and the agents' heartbeat and lists the record names,
// and the same user can write neither a certificate, nor a token, nor an
// issuing mark, nor anything else.
func TestNginxRunsAsTheLeastPrivilegeUser(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	const prefix = "certagent:"
	testenv.SetACL(t, "certagent-nginx", prefix, "ng1nx pw", r.Client)
	// The default user keeps full rights: the test writes as the agent would.
	e := startAsNginxUser(t, r, prefix)
	n := e.nginx
	logStart := n.ErrorLogSize()

	// HMGET of a certificate.
	first := newLeaf(t, "acl.example.test", []string{"acl.example.test"}, time.Now().Add(24*time.Hour))
	e.store("acl.example.test", first)
	if got := e.mustHandshake("acl.example.test"); !got.Equal(first.cert) {
		t.Fatalf("served %q, want the stored certificate", got.Subject.CommonName)
	}
	// XADD of a requested name.
	e.mustHandshake("missing.example.test")
	waitFor(t, "the missing name in the requests stream", func() bool {
		for _, m := range e.streamEntries() {
			if m.Values["name"] == "missing.example.test" {
				return true
			}
		}
		return false
	})
	// GET of an issuing mark: a handshake for a name being issued is held
	// until its certificate is stored, which it can only know from the mark.
	const held = "held.example.test"
	heldLeaf := newLeaf(t, held, []string{held}, time.Now().Add(24*time.Hour))
	e.mark(held, "issuing")
	stored := e.storeAfter(300*time.Millisecond, held, heldLeaf)
	if got := e.mustHandshake(held); !got.Equal(heldLeaf.cert) {
		t.Errorf("a name marked issuing got %q on its first handshake, want the certificate stored meanwhile",
			got.Subject.CommonName)
	}
	stored()
	// XREAD/XINFO of the changes stream: a replaced certificate is served
	// once nginx has read its changes entry.
	second := newLeaf(t, "acl.example.test", []string{"acl.example.test"}, time.Now().Add(48*time.Hour))
	e.store("acl.example.test", second)
	waitFor(t, "the replaced certificate, through the changes stream", func() bool {
		c, err := e.handshake("acl.example.test")
		return err == nil && c.Equal(second.cert)
	})
	// GET of a token.
	const host, token, keyAuth = "acl.example.test", "aclToken-123", "aclToken-123.thumb"
	if err := r.Client.Set(ctx, e.key("token", "name", host, "token", token), keyAuth, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if status, _, body := e.request("GET", host, "/.well-known/acme-challenge/"+token); status != 200 || body != keyAuth {
		t.Errorf("challenge as the nginx user: %d %q, want 200 %q", status, body, keyAuth)
	}
	// HMGET of the published rules and PTTL of the heartbeat: a name the
	// rules cannot allow is no longer recorded.
	reads := e.commands("hmget", "pttl")
	e.beat(time.Minute)
	e.publishRules(1, "*.example.test", "", "")
	waitFor(t, "nginx to read the published rules", func() bool { return e.commands("hmget", "pttl") >= reads+2 })
	e.mustHandshake("outside.example.org")
	e.mustHandshake("recorded.example.test")
	waitFor(t, "the name inside the rules in the requests stream", func() bool {
		entries := e.streamEntries()
		return len(entries) > 0 && entries[len(entries)-1].Values["name"] == "recorded.example.test"
	})
	for _, m := range e.streamEntries() {
		if m.Values["name"] == "outside.example.org" {
			t.Errorf("a name outside the published rules was recorded")
		}
	}
	// No command of nginx was refused (SCAN of the name index included).
	for _, line := range n.ErrorLogSince(logStart) {
		if strings.Contains(line, "NOPERM") || strings.Contains(line, "permission") {
			t.Errorf("nginx was refused a command: %s", line)
		}
	}

	// The same user, from a client of its own: every write but XADD to the
	// requests stream is refused, and so is reading the agents' keys.
	as := redis.NewClient(&redis.Options{Addr: r.Addr, Username: "certagent-nginx", Password: "ng1nx pw", ContextTimeoutEnabled: true})
	defer as.Close()
	if err := as.XAdd(ctx, &redis.XAddArgs{Stream: e.key("requests"), MaxLen: 10000, Approx: true,
		Values: []any{"name", "x.example.test", "node", "n"}}).Err(); err != nil {
		t.Errorf("XADD to the requests stream: %v", err)
	}
	certKey := e.key("cert", "name", "acl.example.test")
	tokenKey := e.key("token", "name", host, "token", token)
	for what, cmd := range map[string]redis.Cmder{
		"HSET of a certificate":       as.HSet(ctx, certKey, "fullchain", "forged"),
		"DEL of a certificate":        as.Del(ctx, certKey),
		"HSET of a new certificate":   as.HSet(ctx, e.key("cert", "name", "evil.example.test"), "fullchain", "x"),
		"SET of a token":              as.Set(ctx, tokenKey, "forged", time.Minute),
		"SET of a new token":          as.Set(ctx, e.key("token", "name", "evil.example.test", "token", "t"), "x", time.Minute),
		"SET of an issuing mark":      as.Set(ctx, e.key("issuing", "name", "evil.example.test"), "issuing", time.Minute),
		"HSET of the rules":           as.HSet(ctx, e.key("rules"), "static", "*"),
		"SET of the heartbeat":        as.Set(ctx, e.key("alive"), "forged", time.Minute),
		"XADD to the changes stream":  as.XAdd(ctx, &redis.XAddArgs{Stream: e.key("changes"), Values: []any{"name", "a", "op", "delete"}}),
		"XADD to a certificate key":   as.XAdd(ctx, &redis.XAddArgs{Stream: e.key("cert", "name", "evil2.example.test"), Values: []any{"a", "b"}}),
		"reading the requests stream": as.XRange(ctx, e.key("requests"), "-", "+"),
		"reading a lock":              as.Get(ctx, e.key("lock", "name", "acl.example.test")),
		"reading the allowlist":       as.SMembers(ctx, e.key("allow")),
		"EVAL":                        as.Eval(ctx, "return 1", nil),
		"FLUSHALL":                    as.FlushAll(ctx),
	} {
		if err := cmd.Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%s as the nginx user: %v, want NOPERM", what, err)
		}
	}
	if got, _ := r.Client.HGet(ctx, certKey, "fullchain").Result(); got != second.chainPEM {
		t.Error("the certificate record changed")
	}
	if got, _ := r.Client.Get(ctx, tokenKey).Result(); got != keyAuth {
		t.Error("the token changed")
	}
}

// TestNginxWithAnACLWithoutTheRules: an installation that updated nginx's
// Lua but not its ACL line (no read of rules and alive) behaves as before
// the rules: every name is recorded, none is judged out, no handshake fails.
func TestNginxWithAnACLWithoutTheRules(t *testing.T) {
	r := testenv.StartRedis(t)
	const prefix = "certagent:"
	var args []any
	for _, a := range testenv.ACLFromDoc(t, "certagent-nginx", prefix, "ng1nx pw") {
		if a == "%R~"+prefix+"rules" || a == "%R~"+prefix+"alive" {
			continue
		}
		args = append(args, a)
	}
	if full := testenv.ACLFromDoc(t, "certagent-nginx", prefix, "ng1nx pw"); len(args) != len(full)-2 {
		t.Fatalf("the documented ACL %v has no separate patterns for rules and alive", full)
	}
	if err := r.Client.Do(context.Background(), args...).Err(); err != nil {
		t.Fatal(err)
	}
	e := startAsNginxUser(t, r, prefix)
	e.beat(time.Minute)
	refused := rejectedRulesReads(t, r)
	e.publishRules(1, "*.example.test", "", "")
	// Redis has refused a read of the rules made after they were published:
	// had it been allowed, the worker would judge by them now. The reads
	// follow the announcement or the retries after a failure (at most 30 s
	// apart).
	testenv.WaitFor(t, 45*time.Second, "a read of the published rules refused by the ACL", func() bool {
		return rejectedRulesReads(t, r) > refused
	})
	if c := e.mustHandshake("outside.example.org"); !e.isFallback(c) {
		t.Fatalf("served %q, want the fallback", c.Subject.CommonName)
	}
	waitFor(t, "the name recorded as before the rules", func() bool {
		for _, m := range e.streamEntries() {
			if m.Values["name"] == "outside.example.org" {
				return true
			}
		}
		return false
	})
}

// rejectedRulesReads counts the reads of the rules (HMGET) Redis has refused.
func rejectedRulesReads(t *testing.T, r *testenv.Redis) int64 {
	t.Helper()
	n, err := r.RejectedCalls("hmget")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startAsNginxUser starts nginx on r as the user certagent-nginx (password
// "ng1nx pw"), whose ACL the test has set.
func startAsNginxUser(t *testing.T, r *testenv.Redis, prefix string) *env {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:  "redis://certagent-nginx:ng1nx%20pw@" + r.Addr + "/0",
		Env:       map[string]string{"CERTAGENT_NODE": testNode},
		LuaConfig: map[string]string{"changes_interval": "1"},
	})
	e := &env{t: t, redis: r, nginx: n, prefix: prefix, schema: schema}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	return e
}
