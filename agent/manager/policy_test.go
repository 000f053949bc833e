package manager

import "testing"

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
