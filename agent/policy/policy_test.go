package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicy(t *testing.T) {
	p, err := ParsePolicy([]string{"shop.example.com", "*.example.org", " ", "Upper.Example.NET."})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"shop.example.com":   true,
		"www.example.com":    false,
		"example.com":        false,
		"a.example.org":      true,
		"a.b.example.org":    true,
		"example.org":        false,
		"badexample.org":     false,
		"upper.example.net":  true,
		"other.example.net":  false,
		"shop.example.com.x": false,
	} {
		if got := p.Allows(name); got != want {
			t.Errorf("Allows(%q) = %v, want %v", name, got, want)
		}
	}
	if p.Empty() {
		t.Error("policy with rules reports empty")
	}
	empty, _ := ParsePolicy(nil)
	if !empty.Empty() || empty.Allows("a.example.com") {
		t.Error("an empty policy must deny everything")
	}
	all, _ := ParsePolicy([]string{"*"})
	if !all.Allows("anything.example") {
		t.Error(`"*" must allow every name`)
	}
	for _, bad := range []string{"*.", "exa mple.com", "*.*.example.com", "1.2.3.4"} {
		if _, err := ParsePolicy([]string{bad}); err == nil {
			t.Errorf("ParsePolicy(%q): want an error", bad)
		}
	}
}

func TestReadRulesFileAndUnicodeRules(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "rules")
	os.WriteFile(good, []byte("# shops\nshop.example.com\n\n  *.Bücher.example  \n"), 0o644)
	rules, err := ReadRulesFile(good)
	if err != nil || len(rules) != 2 {
		t.Fatalf("ReadRulesFile = %q, %v", rules, err)
	}
	p, err := ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allows("a.xn--bcher-kva.example") || !p.Allows("shop.example.com") || p.Allows("xn--bcher-kva.example") {
		t.Error("rules from the file are not applied in their xn-- form")
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("ok.example.com\nbad_name.example.com\n"), 0o644)
	if _, err := ReadRulesFile(bad); err == nil || !strings.Contains(err.Error(), "bad:2") {
		t.Errorf("a bad line: %v, want an error naming file and line 2", err)
	}
	if _, err := ReadRulesFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file: want an error")
	}
	for rule, want := range map[string]string{"*.Bücher.Example.": "*.xn--bcher-kva.example", "SHOP.example.com": "shop.example.com"} {
		if got, err := ParseRule(rule); err != nil || got != want {
			t.Errorf("ParseRule(%q) = %q, %v; want %q", rule, got, err, want)
		}
	}
	if _, err := ParseRule("*"); err == nil {
		t.Error(`ParseRule("*"): want an error (allowing everything is a flag)`)
	}
}
