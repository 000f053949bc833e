package nginxtest

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/names"
)

// normalizeBatchLocation runs certagent.names over the lines of the request
// body, one answer a line: the test harness adds it to the plain HTTP
// server; nothing like it ships.
const normalizeBatchLocation = `
        location = /_test/normalize-batch {
            client_max_body_size 4m;
            client_body_buffer_size 4m;
            content_by_lua_block {
                local normalize = require("certagent.names").normalize
                ngx.req.read_body()
                local out = {}
                for line in (ngx.req.get_body_data() or ""):gmatch("[^\n]+") do
                    local name = normalize(line)
                    out[#out + 1] = name and ("ok " .. name) or "err"
                end
                ngx.print(table.concat(out, "\n"))
            }
        }
`

// idnaSamples are code points the random labels are made of: the ASCII
// that may stand in a label, letters, marks, viramas and digits of scripts
// written both ways, the joiners, and symbols IDNA2008 disallows.
var idnaSamples = []rune{
	'a', 'b', 'z', '0', '1', '9', '-',
	0x00DF, 0x00E9, 0x00FC, 0x00B7, 0x0301, 0x0308, 0x0323, 0x03C2, 0x03B1, 0x0430, 0x0640,
	0x05D0, 0x05D1, 0x05B7, 0x05F3, 0x0627, 0x0628, 0x062E, 0x0645, 0x0647, 0x0648, 0x064E, 0x0661, 0x06F1, 0x06CC,
	0x0915, 0x0937, 0x093C, 0x094D, 0x0BCD, 0x0D4D, 0x200C, 0x200D,
	0x3007, 0x30FB, 0x4E2D, 0x56FD, 0x1100, 0xAC00, 0x2603, 0x2764, 0x1F4A9, 0x20D0, 0xFFFD, 0x00A0, 0x0080,
	// for NFC: letters that compose with the marks above, and pairs of
	// starters that compose
	'e', 'o', 'u', 0x00EA, 0x1EB9, 0x01EB, 0x03B9, 0x03CA, 0x0928, 0x304B, 0x3099, 0x309A, 0x0B47, 0x0B3E,
	0x0B57, 0x0328, 0x0304, 0x0302, 0x0345, 0x05B4, 0x05BC,
}

// randomLabel is a label to try: the punycode of random code points, or
// random punycode digits (mostly not valid punycode).
func randomLabel(rng *rand.Rand) string {
	if rng.IntN(4) == 0 {
		const digits = "abcdefghijklmnopqrstuvwxyz0123456789-"
		b := []byte("xn--")
		for range 1 + rng.IntN(10) {
			b = append(b, digits[rng.IntN(len(digits))])
		}
		return string(b)
	}
	var rs []rune
	for range 1 + rng.IntN(5) {
		if rng.IntN(6) == 0 {
			rs = append(rs, rune(0x80+rng.IntN(0x2FFFF)))
		} else {
			rs = append(rs, idnaSamples[rng.IntN(len(idnaSamples))])
		}
	}
	label, err := idna.Punycode.ToASCII(string(rs))
	if err != nil {
		return "xn--" + string(rs)
	}
	return label
}

// TestLuaIDNAMatchesGo sends thousands of random xn-- names through the
// Lua check and the Go one: they agree on every name.
func TestLuaIDNAMatchesGo(t *testing.T) {
	e := start(t, normalizeBatchLocation)
	rng := rand.New(rand.NewPCG(16, 5))
	tails := []string{".example", ".1a", ".xn--mgbh0fb", ".xn--bcher-kva.example"}
	var inputs []string
	for range 30000 {
		name := randomLabel(rng) + tails[rng.IntN(len(tails))]
		if rng.IntN(5) == 0 {
			name = "www." + name
		}
		inputs = append(inputs, name)
	}
	var answers []string
	for i := 0; i < len(inputs); i += 2000 {
		resp, err := http.Post("http://"+e.nginx.HTTPAddr+"/_test/normalize-batch", "text/plain",
			strings.NewReader(strings.Join(inputs[i:i+2000], "\n")))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answers = append(answers, strings.Split(string(body), "\n")...)
	}
	if len(answers) != len(inputs) {
		t.Fatalf("%d answers for %d names", len(answers), len(inputs))
	}
	valid, notNFC, bad := 0, 0, 0
	for i, in := range inputs {
		goName, goErr := names.Normalize(in)
		want := "err"
		if goErr == nil {
			want, valid = "ok "+goName, valid+1
		}
		if !allNFC(in) {
			notNFC++
		}
		if answers[i] != want {
			if bad++; bad <= 20 {
				t.Errorf("%q (%s): Lua says %q, Go says %q %v", in, unicodeForm(in), answers[i], want, goErr)
			}
		}
	}
	t.Logf("%d names, %d valid, %d that decode to a label not in NFC", len(inputs), valid, notNFC)
	if valid < 1000 || notNFC < 100 {
		t.Errorf("only %d valid and %d non-NFC random names; the test proves little", valid, notNFC)
	}
}

// allNFC reports whether every xn-- label of name decodes to an NFC string.
func allNFC(name string) bool {
	for _, label := range strings.Split(name, ".") {
		if u, err := idna.Punycode.ToUnicode(label); err == nil && !norm.NFC.IsNormalString(u) {
			return false
		}
	}
	return true
}

func unicodeForm(name string) string {
	u, err := idna.Punycode.ToUnicode(name)
	if err != nil {
		return fmt.Sprintf("no Unicode form: %v", err)
	}
	return fmt.Sprintf("%+q", u)
}

// normalizeLoopLocation times certagent.names.normalize over n calls of one
// name, in nanoseconds a call: the test harness adds it; nothing like it
// ships.
const normalizeLoopLocation = `
        location = /_test/normalize-loop {
            content_by_lua_block {
                local normalize = require("certagent.names").normalize
                local name, n = ngx.var.arg_name, tonumber(ngx.var.arg_n)
                assert(normalize(name), name)
                ngx.update_time()
                local t0 = ngx.now()
                for _ = 1, n do
                    normalize(name)
                end
                ngx.update_time()
                ngx.print((ngx.now() - t0) * 1e9 / n)
            }
        }
`

// BenchmarkLuaNameCheck is what the name rule costs nginx per name, for a
// plain name and for xn-- names (docs/benchmarks.md, "The name rule"):
//
//	go test -run '^$' -bench BenchmarkLuaNameCheck -benchtime 1x ./agent/nginxtest/
func BenchmarkLuaNameCheck(b *testing.B) {
	r := testenv.StartRedis(b)
	nginx := testenv.StartNginx(b, testenv.NginxOptions{RedisURL: r.URL, HTTPServerExtra: normalizeLoopLocation})
	const n = 200000
	timeOf := func(name string) float64 {
		resp, err := http.Get("http://" + nginx.HTTPAddr + "/_test/normalize-loop?n=" + fmt.Sprint(n) + "&name=" + name)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var ns float64
		if _, err := fmt.Sscan(string(body), &ns); err != nil {
			b.Fatalf("%s: %q", name, body)
		}
		return ns
	}
	names := []string{"www.example.com", "xn--bcher-kva.example", "xn--mgbh0fb.example",
		"xn--mgbn2ecje63gr19l.example", "xn--lsa503l.example"}
	// Each name is timed right after the plain name, b.N rounds; the
	// medians of the times and of the same-run ratios are reported.
	nsOf, ratiosOf := map[string][]float64{}, map[string][]float64{}
	for range b.N {
		for _, name := range names {
			base := timeOf(names[0])
			ns := timeOf(name)
			nsOf[name] = append(nsOf[name], ns)
			ratiosOf[name] = append(ratiosOf[name], ns/base)
		}
	}
	median := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	for _, name := range names {
		b.Logf("%-30s %6.0f ns/name, %4.1fx the plain name (median of %d same-run ratios: %.1f)", name,
			median(nsOf[name]), median(ratiosOf[name]), b.N, ratiosOf[name])
	}
}
