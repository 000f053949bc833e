package nginxtest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestRedisPasswordAndDatabase: a URL with a password and a database number
// makes nginx AUTH and SELECT, and find the records there.
func TestRedisPasswordAndDatabase(t *testing.T) {
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	ctx := context.Background()
	if err := r.Client.ConfigSet(ctx, "requirepass", "s3 cret").Err(); err != nil {
		t.Fatal(err)
	}
	db3 := redis.NewClient(&redis.Options{Addr: r.Addr, Password: "s3 cret", DB: 3})
	defer db3.Close()
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL: "redis://:s3%20cret@" + r.Addr + "/3",
		Env:      map[string]string{"CERTAGENT_NODE": testNode},
	})
	e := &env{t: t, redis: r, nginx: n, prefix: "certagent:", schema: schema}

	l := newLeaf(t, "db.example.test", []string{"db.example.test"}, time.Now().Add(24*time.Hour))
	k := e.key("cert", "name", "db.example.test")
	if err := db3.HSet(ctx, k, "fullchain", l.chainPEM, "key", l.keyPEM, "not_after", l.notAfter.Unix()).Err(); err != nil {
		t.Fatal(err)
	}
	if got := e.mustHandshake("db.example.test"); !got.Equal(l.cert) {
		t.Fatalf("served %q, want the record of database 3\n%s", got.Subject.CommonName, n.ErrorLog())
	}
	e.mustHandshake("missing.example.test")
	waitFor(t, "the request in database 3", func() bool {
		msgs, err := db3.XRange(ctx, e.key("requests"), "-", "+").Result()
		return err == nil && len(msgs) == 1 && msgs[0].Values["name"] == "missing.example.test"
	})
}

// parseLocation exposes certagent.config.parse_redis_url to the test.
const parseLocation = `
        location = /_test/parse {
            content_by_lua_block {
                local r, err = require("certagent.config").parse_redis_url(ngx.var.arg_url and ngx.unescape_uri(ngx.var.arg_url) or "")
                if not r then ngx.print("err ", err) return end
                ngx.print(table.concat({ tostring(r.host), tostring(r.port), tostring(r.path), tostring(r.db),
                                         tostring(r.username), tostring(r.password) }, "|"))
            }
        }
`

func TestParseRedisURL(t *testing.T) {
	e := start(t, parseLocation)
	for url, want := range map[string]string{
		"redis://127.0.0.1:6379/0":             "127.0.0.1|6379|nil|0|nil|nil",
		"redis://redis.internal":               "redis.internal|6379|nil|0|nil|nil",
		"redis://:pw@10.0.0.1:6380/2":          "10.0.0.1|6380|nil|2|nil|pw",
		"redis://nginx:p%40ss@h:1/15":          "h|1|nil|15|nginx|p@ss",
		"redis://[::1]:7000/1":                 "::1|7000|nil|1|nil|nil",
		"unix:/run/redis/redis.sock":           "nil|nil|/run/redis/redis.sock|0|nil|nil",
		"unix:/run/redis.sock?db=4&password=x": "nil|nil|/run/redis.sock|4|nil|x",
		"rediss://h:6379":                      "err",
		"http://h":                             "err",
		"redis://h:99999":                      "err",
		"redis://h/x":                          "err",
		"unix:relative.sock":                   "err",
		"":                                     "err",
	} {
		resp, err := http.Get("http://" + e.nginx.HTTPAddr + "/_test/parse?url=" + urlEscape(url))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := string(body)
		if want == "err" && !strings.HasPrefix(got, "err ") || want != "err" && got != want {
			t.Errorf("parse_redis_url(%q) = %q, want %q", url, got, want)
		}
	}
}

func urlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteString("%")
		b.WriteString(strings.ToUpper(string("0123456789abcdef"[s[i]>>4]) + string("0123456789abcdef"[s[i]&15])))
	}
	return b.String()
}
