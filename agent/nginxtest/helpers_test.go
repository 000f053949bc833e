// Package nginxtest tests the Lua side (lua/, nginx/) through a real nginx and
// a real Redis. Keys are built from docs/redis-schema.md, not from the Go
// store, so a Lua module drifting from the document fails here.
package nginxtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/redis/go-redis/v9"
)

const testNode = "node-under-test"

type env struct {
	t      testing.TB
	redis  *testenv.Redis
	nginx  *testenv.Nginx
	prefix string
	schema map[string]schemadoc.Entry
}

// start brings up Redis and nginx with a non-default key prefix, so a Lua
// module that ignores key_prefix fails.
func start(t *testing.T, extra string) *env {
	t.Helper()
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	prefix := "ct" + strconv.Itoa(os.Getpid()%1000) + ":"
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:        r.URL,
		KeyPrefix:       prefix,
		Env:             map[string]string{"CERTAGENT_NODE": testNode},
		HTTPServerExtra: extra,
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	return &env{t: t, redis: r, nginx: n, prefix: prefix, schema: schema}
}

// key builds a key from the schema document's table.
func (e *env) key(id string, vars ...string) string {
	e.t.Helper()
	entry, ok := e.schema[id]
	if !ok {
		e.t.Fatalf("the schema document has no key %q", id)
	}
	k, err := entry.Key(e.prefix, vars...)
	if err != nil {
		e.t.Fatal(err)
	}
	return k
}

type leaf struct {
	cert     *x509.Certificate
	chainPEM string
	keyPEM   string
	notAfter time.Time
}

// newLeaf makes a CA and a leaf it signed for names, valid until notAfter.
func newLeaf(t testing.TB, cn string, names []string, notAfter time.Time) leaf {
	t.Helper()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "certagent test CA", IsCA: true,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})
	c := testenv.NewCert(t, testenv.CertSpec{CommonName: cn, DNSNames: names, NotAfter: notAfter, Parent: ca})
	return leaf{cert: c.X509, chainPEM: string(c.ChainPEM()), keyPEM: string(c.KeyPEM), notAfter: notAfter}
}

// store writes l as the record of name, the fields nginx reads per the
// schema, with its entry in the changes stream, as the agent does.
func (e *env) store(name string, l leaf) {
	e.t.Helper()
	e.storeFields(name, leafFields(l))
}

func leafFields(l leaf) map[string]any {
	return map[string]any{
		"fullchain": l.chainPEM,
		"key":       l.keyPEM,
		"not_after": strconv.FormatInt(l.notAfter.Unix(), 10),
	}
}

func (e *env) storeFields(name string, fields map[string]any) {
	e.t.Helper()
	e.write(name, fields, true)
}

// storeUnannounced writes the record without a changes entry: what nginx
// can only learn when its cached answer expires.
func (e *env) storeUnannounced(name string, l leaf) {
	e.t.Helper()
	e.write(name, leafFields(l), false)
}

// remove deletes the record of name with its changes entry, as the agent does.
func (e *env) remove(name string) {
	e.t.Helper()
	e.write(name, nil, true)
}

// write replaces (fields) or deletes (nil) the record of name in one MULTI,
// with the changes entry the schema document describes when announce is set.
func (e *env) write(name string, fields map[string]any, announce bool) {
	e.t.Helper()
	k := e.key("cert", "name", name)
	ctx := context.Background()
	op := "put"
	if fields == nil {
		op = "delete"
	}
	_, err := e.redis.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, k)
		if fields != nil {
			p.HSet(ctx, k, fields)
		}
		if announce {
			p.XAdd(ctx, &redis.XAddArgs{Stream: e.key("changes"), MaxLen: 1000, Approx: true,
				Values: []any{"name", name, "op", op}})
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// handshake connects with SNI serverName ("" sends none) and returns the leaf
// the server presented, or the handshake error.
func (e *env) handshake(serverName string) (*x509.Certificate, error) {
	conn, err := net.DialTimeout("tcp", e.nginx.HTTPSAddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(conn, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	certs := c.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, nil
	}
	return certs[0], nil
}

func (e *env) mustHandshake(serverName string) *x509.Certificate {
	e.t.Helper()
	c, err := e.handshake(serverName)
	if err != nil {
		e.t.Fatalf("handshake with SNI %q: %v\nerror log:\n%s", serverName, err, e.nginx.ErrorLog())
	}
	return c
}

func (e *env) isFallback(c *x509.Certificate) bool {
	return c != nil && c.Equal(e.nginx.FallbackCert)
}

// streamEntries returns the entries of the requests stream.
func (e *env) streamEntries() []redis.XMessage {
	e.t.Helper()
	msgs, err := e.redis.Client.XRange(context.Background(), e.key("requests"), "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return msgs
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, what, cond)
}

// settle gives the out-of-band XADD timers time to run before a test asserts
// that nothing was written. It waits until a marker handshake (whose name is
// recorded) shows up in the stream: timers run in order on the one worker.
func (e *env) settle() {
	e.t.Helper()
	marker := "settle-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ".marker.test"
	e.mustHandshake(marker)
	waitFor(e.t, "the marker request "+marker, func() bool {
		for _, m := range e.streamEntries() {
			if m.Values["name"] == marker {
				return true
			}
		}
		return false
	})
}

// namesIn returns the name fields of the stream entries, markers excluded.
func (e *env) namesIn() []string {
	var out []string
	for _, m := range e.streamEntries() {
		name, _ := m.Values["name"].(string)
		if strings.HasSuffix(name, ".marker.test") {
			continue
		}
		out = append(out, name)
	}
	return out
}

// errorLines returns the [error] (and worse) lines logged after offset.
func (e *env) errorLines(offset int) []string {
	var out []string
	for _, line := range e.nginx.ErrorLogSince(offset) {
		if strings.Contains(line, "[error]") || strings.Contains(line, "[crit]") ||
			strings.Contains(line, "[alert]") || strings.Contains(line, "[emerg]") {
			out = append(out, line)
		}
	}
	return out
}

// docStreamFields returns the entry fields the schema document lists for the
// requests stream (the backquoted words after "entry fields").
func (e *env) docStreamFields() []string {
	e.t.Helper()
	enc := e.schema["requests"].Encoding
	i := strings.Index(enc, "entry fields")
	if i < 0 {
		e.t.Fatalf("the schema document does not list the stream's entry fields: %q", enc)
	}
	var fields []string
	parts := strings.Split(enc[i:], "`")
	for j := 1; j < len(parts); j += 2 {
		fields = append(fields, parts[j])
	}
	return fields
}
