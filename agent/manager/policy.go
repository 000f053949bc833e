package manager

import (
	"fmt"
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
		case strings.HasPrefix(rule, "*."):
			parent, err := names.Normalize(rule[2:])
			if err != nil {
				return nil, fmt.Errorf("allow rule %q: %w", rule, err)
			}
			p.suffixes = append(p.suffixes, "."+parent)
		default:
			name, err := names.Normalize(rule)
			if err != nil {
				return nil, fmt.Errorf("allow rule %q: %w", rule, err)
			}
			p.exact[name] = true
		}
	}
	return p, nil
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

// Empty reports whether the policy allows nothing.
func (p *Policy) Empty() bool { return !p.all && len(p.exact) == 0 && len(p.suffixes) == 0 }
