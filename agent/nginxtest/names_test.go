package nginxtest

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/names"
)

type nameCase struct {
	Input string `json:"input"`
	Want  string `json:"want"`
	Valid bool   `json:"valid"`
	Why   string `json:"why"`
}

func loadNameCases(t *testing.T) []nameCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "agent", "names", "testdata", "names.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []nameCase
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	return cases
}

// sentAsIs reports whether Go's TLS client sends name unchanged as the SNI
// (it strips trailing dots and sends nothing for IP literals).
func sentAsIs(name string) bool {
	return name != "" && !strings.HasSuffix(name, ".") && !strings.HasPrefix(name, "[") && net.ParseIP(name) == nil
}

// normalizeLocation calls certagent.names directly: the test harness adds it to
// the plain HTTP server; nothing like it ships.
const normalizeLocation = `
        location = /_test/normalize {
            content_by_lua_block {
                local raw = (ngx.var.arg_hex or ""):gsub("%x%x", function(h)
                    return string.char(tonumber(h, 16))
                end)
                local name, err = require("certagent.names").normalize(raw)
                if name then ngx.print("ok ", name) else ngx.print("err ", err) end
            }
        }
`

// TestLuaNormalizeMatchesGo runs every case of the shared table through the
// Lua module and through Go.
func TestLuaNormalizeMatchesGo(t *testing.T) {
	e := start(t, normalizeLocation)
	for _, c := range loadNameCases(t) {
		resp, err := http.Get("http://" + e.nginx.HTTPAddr + "/_test/normalize?hex=" + hex.EncodeToString([]byte(c.Input)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := string(body)
		goName, goErr := names.Normalize(c.Input)
		switch {
		case goErr == nil && got != "ok "+goName:
			t.Errorf("%q (%s): Lua says %q, Go says %q", c.Input, c.Why, got, goName)
		case goErr != nil && !strings.HasPrefix(got, "err invalid name "):
			t.Errorf("%q (%s): Lua says %q, Go rejects it: %v", c.Input, c.Why, got, goErr)
		}
		if c.Valid && got != "ok "+c.Want {
			t.Errorf("%q (%s): Lua says %q, the table wants %q", c.Input, c.Why, got, c.Want)
		}
	}
}

// TestSNINormalizedLikeGo sends the table's valid names as SNI: the names in
// the stream are the Go-normalized ones, each once.
func TestSNINormalizedLikeGo(t *testing.T) {
	e := start(t, "")
	want := map[string]bool{}
	for _, c := range loadNameCases(t) {
		if !c.Valid {
			continue
		}
		goName, err := names.Normalize(c.Input)
		if err != nil {
			t.Fatalf("Go rejects the valid case %q: %v", c.Input, err)
		}
		want[goName] = true
		if got := e.mustHandshake(c.Input); !e.isFallback(got) {
			t.Errorf("%q: served %q, want the fallback", c.Input, got.Subject.CommonName)
		}
	}
	waitFor(t, "every valid name in the stream", func() bool { return len(e.namesIn()) >= len(want) })
	e.settle()
	got := e.namesIn()
	sort.Strings(got)
	var wantList []string
	for n := range want {
		wantList = append(wantList, n)
	}
	sort.Strings(wantList)
	if strings.Join(got, "\n") != strings.Join(wantList, "\n") {
		t.Errorf("stream names:\n%s\nwant (Go-normalized, each once):\n%s", strings.Join(got, "\n"), strings.Join(wantList, "\n"))
	}
}

// TestMalformedSNI sends the table's invalid names as SNI: none reaches the
// stream. OpenSSL itself refuses some (NUL bytes, over 255 bytes) with an
// alert; the others get the fallback certificate.
func TestMalformedSNI(t *testing.T) {
	e := start(t, "")
	sent, refused := 0, 0
	for _, c := range loadNameCases(t) {
		if c.Valid || !sentAsIs(c.Input) {
			continue
		}
		sent++
		got, err := e.handshake(c.Input)
		if err == nil && !e.isFallback(got) {
			t.Errorf("%q (%s): served %q, want the fallback", c.Input, c.Why, got.Subject.CommonName)
		}
		if err != nil {
			refused++
		}
		if err != nil && !strings.Contains(c.Input, "\x00") && len(c.Input) <= 255 {
			t.Errorf("%q (%s): handshake failed: %v", c.Input, c.Why, err)
		}
	}
	t.Logf("%d malformed names sent, %d handshakes refused", sent, refused)
	if sent < 20 {
		t.Fatalf("only %d malformed names sent, want 20 or more", sent)
	}
	e.settle()
	if names := e.namesIn(); len(names) != 0 {
		t.Errorf("malformed names reached the stream: %q", names)
	}
}
