package names

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// Case is one row of testdata/names.json, shared with the Lua tests.
type Case struct {
	Input string `json:"input"`
	Want  string `json:"want"`
	Valid bool   `json:"valid"`
	Why   string `json:"why"`
}

func loadCases(t testing.TB) []Case {
	t.Helper()
	data, err := os.ReadFile("testdata/names.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []Case
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatalf("parsing testdata/names.json: %v", err)
	}
	if len(cases) < 50 {
		t.Fatalf("only %d cases in testdata/names.json", len(cases))
	}
	return cases
}

func TestNormalizeTable(t *testing.T) {
	for _, c := range loadCases(t) {
		got, err := Normalize(c.Input)
		if c.Valid {
			if err != nil || got != c.Want {
				t.Errorf("Normalize(%q) = %q, %v; want %q (%s)", c.Input, got, err, c.Want, c.Why)
			}
			continue
		}
		if c.Want != "" {
			t.Errorf("case %q: invalid cases must have want \"\"", c.Input)
		}
		if err == nil {
			t.Errorf("Normalize(%q) = %q; want an error (%s)", c.Input, got, c.Why)
		} else if got != "" {
			t.Errorf("Normalize(%q) returned %q with error %v", c.Input, got, err)
		} else if !strings.HasPrefix(err.Error(), "invalid name ") {
			t.Errorf("Normalize(%q): error %q does not start with \"invalid name\"", c.Input, err)
		}
	}
}

func TestErrorsSayWhy(t *testing.T) {
	for input, want := range map[string]string{
		strings.Repeat("a", 64) + ".example": "label too long",
		"1.2.3.4":                            "numeric",
		"*.example.com":                      "wildcard",
		"localhost":                          "two labels",
		"b\u00fccher.example":                "non-ASCII",
		"[::1]":                              "not allowed",
		"::1":                                "':'",
	} {
		_, err := Normalize(input)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Normalize(%q) error = %v; want it to mention %q", input, err, want)
		}
	}
}

func FuzzNormalize(f *testing.F) {
	for _, c := range loadCases(f) {
		f.Add(c.Input)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		out, err := Normalize(raw)
		if err != nil {
			if out != "" {
				t.Fatalf("Normalize(%q) returned %q with error %v", raw, out, err)
			}
			return
		}
		again, err := Normalize(out)
		if err != nil || again != out {
			t.Fatalf("Normalize(%q) = %q, but Normalize(%q) = %q, %v", raw, out, out, again, err)
		}
		if len(out) > MaxLength || strings.ToLower(out) != out || strings.HasSuffix(out, ".") {
			t.Fatalf("Normalize(%q) = %q is not canonical", raw, out)
		}
	})
}
