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
	// Operator is what FromOperator must return when it differs from the
	// SNI rules (Unicode input, punycode that does not decode); absent: the same.
	Operator *struct {
		Want  string `json:"want"`
		Valid bool   `json:"valid"`
	} `json:"operator,omitempty"`
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

// TestFromOperatorTable runs the shared table through the operator path: the
// same answers as the SNI rules unless a case says otherwise.
func TestFromOperatorTable(t *testing.T) {
	differ := 0
	for _, c := range loadCases(t) {
		want, valid := c.Want, c.Valid
		if c.Operator != nil {
			want, valid = c.Operator.Want, c.Operator.Valid
			differ++
		}
		got, err := FromOperator(c.Input)
		switch {
		case valid && (err != nil || got != want):
			t.Errorf("FromOperator(%q) = %q, %v; want %q (%s)", c.Input, got, err, want, c.Why)
		case !valid && err == nil:
			t.Errorf("FromOperator(%q) = %q; want an error (%s)", c.Input, got, c.Why)
		case !valid && (got != "" || !strings.HasPrefix(err.Error(), "invalid name ")):
			t.Errorf("FromOperator(%q) = %q, %v; want \"\" and an \"invalid name\" error", c.Input, got, err)
		}
	}
	if differ < 10 {
		t.Errorf("only %d cases where operator input differs from SNI; want 10 or more", differ)
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
		// What an operator types ends up in the same form, or is refused.
		op, err := FromOperator(raw)
		if err == nil {
			if op != out {
				t.Fatalf("FromOperator(%q) = %q, Normalize says %q", raw, op, out)
			}
			if again, err := FromOperator(op); err != nil || again != op {
				t.Fatalf("FromOperator(%q) = %q, but FromOperator(%q) = %q, %v", raw, op, op, again, err)
			}
		} else if CheckIDNA(out) == nil {
			t.Fatalf("FromOperator(%q) refuses what Normalize and CheckIDNA accept: %v", raw, err)
		}
	})
}

func TestWildcardParent(t *testing.T) {
	for name, want := range map[string]string{
		"a.b.example": "b.example", "www.example.com": "example.com", "example.com": "", "com": "",
		"*.example.com": "", ".example.com": "", "a.b.c.example": "b.c.example",
	} {
		got, ok := WildcardParent(name)
		if got != want || ok != (want != "") {
			t.Errorf("WildcardParent(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
	// No "*.com": a wildcard for a public suffix covers nothing.
	if Covers([]string{"*.com"}, "example.com") || !Covers([]string{"*.example.com"}, "a.example.com") {
		t.Error("Covers does not follow WildcardParent")
	}
}
