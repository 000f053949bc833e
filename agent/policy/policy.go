package policy

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/certagent/certagent/agent/names"
)

// Policy decides which names may get a certificate. It denies every name that
// no rule allows.
type Policy struct {
	exact    map[string]bool
	suffixes []string // ".example.com" for the rule "*.example.com"
	all      bool
}

// ParsePolicy reads allow rules: an exact name ("shop.example.com"), a suffix
// rule ("*.example.com": every name below example.com, at any depth, but not
// example.com itself), or "*" (every valid name; only sensible behind another
// gate such as a firewall or a private CA).
func ParsePolicy(rules []string) (*Policy, error) {
	p := &Policy{exact: map[string]bool{}}
	for _, rule := range rules {
		rule = strings.TrimSpace(rule)
		switch {
		case rule == "":
		case rule == "*":
			p.all = true
		default:
			canonical, err := ParseRule(rule)
			if err != nil {
				return nil, err
			}
			if parent, ok := names.CutWildcard(canonical); ok {
				p.suffixes = append(p.suffixes, "."+parent)
			} else {
				p.exact[canonical] = true
			}
		}
	}
	return p, nil
}

// ParseRule returns the canonical form of one exact or suffix rule
// ("*.example.com"), converting Unicode names to their xn-- form. It refuses
// "*" alone: allowing every name is a flag, not an allowlist entry.
func ParseRule(rule string) (string, error) {
	rule = strings.TrimSpace(rule)
	name, err := names.NormalizeWildcard(rule, names.FromOperator)
	if err != nil {
		return "", fmt.Errorf("allow rule %q: %w", rule, err)
	}
	return name, nil
}

// ReadRulesFile reads allow rules from a file: one a line, blank lines and
// lines starting with # ignored.
func ReadRulesFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading allow rules: %w", err)
	}
	defer f.Close()
	var rules []string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if _, err := ParseRule(text); err != nil && text != "*" {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		rules = append(rules, text)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading allow rules from %s: %w", path, err)
	}
	return rules, nil
}

// Allows reports whether the normalized name may get a certificate.
func (p *Policy) Allows(name string) bool {
	if p.all || p.exact[name] {
		return true
	}
	for _, suffix := range p.suffixes {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}

// Rules returns the policy as rules in the allowlist's grammar, sorted:
// "*", exact names and "*.parent".
func (p *Policy) Rules() []string {
	var out []string
	if p.all {
		out = append(out, "*")
	}
	for name := range p.exact {
		out = append(out, name)
	}
	for _, suffix := range p.suffixes {
		out = append(out, "*"+suffix)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Empty reports whether the policy allows nothing.
func (p *Policy) Empty() bool { return !p.all && len(p.exact) == 0 && len(p.suffixes) == 0 }
