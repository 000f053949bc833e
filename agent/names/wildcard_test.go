package names

import (
	"strings"
	"testing"
)

func TestNormalizeWildcard(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "A.Example.COM", want: "a.example.com"},
		{in: "*.Example.COM.", want: "*.example.com"},
		{in: "*.bücher.example", want: "*.xn--bcher-kva.example"},
		{in: "*.*.example.com", err: `"*.*.example.com": only the leftmost label may be a wildcard`},
		{in: "a.*.example.com", err: "wildcard"},
		{in: "*.com.", err: "two labels"},
	} {
		got, err := NormalizeWildcard(tc.in, FromOperator)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("NormalizeWildcard(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("NormalizeWildcard(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if p, ok := CutWildcard("*.example.com"); !ok || p != "example.com" || Wildcard(p) != "*.example.com" {
		t.Errorf("CutWildcard(*.example.com) = %q, %v", p, ok)
	}
	if _, ok := CutWildcard("example.com"); ok {
		t.Error("example.com is taken for a wildcard")
	}
}
