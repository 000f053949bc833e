// Package names normalizes and validates the host names certagent handles: the
// SNI of a handshake, the Host of a challenge request, the names an operator
// types. The Lua module lua/certagent/names.lua applies the same rules; the case
// table testdata/names.json is checked against both.
package names

import (
	"fmt"
	"strings"
)

// MaxLength is the longest name accepted, without the trailing dot.
const MaxLength = 253

// MaxLabelLength is the longest label accepted.
const MaxLabelLength = 63

// Normalize returns the canonical form of a host name: ASCII lowercase with one
// trailing dot removed. It rejects anything that is not a DNS host name with at
// least two labels: IP literals (v4 and v6), wildcards, underscores, spaces,
// control characters and non-ASCII bytes (IDNA names arrive as xn-- labels),
// and names with an xn-- label that is not a valid IDNA2008 A-label
// (CheckIDNA). Only names with an xn-- label pay for the IDNA check.
func Normalize(raw string) (string, error) {
	name, err := NormalizeLDH(raw)
	if err != nil || !strings.Contains(name, "xn--") {
		return name, err
	}
	if err := CheckIDNA(name); err != nil {
		return "", err
	}
	return name, nil
}

// NormalizeLDH is Normalize without the IDNA check: the canonical form of a
// name made of letters, digits and hyphens, whatever its xn-- labels decode
// to. A name it accepts and Normalize refuses still has a key in Redis: the
// agent marks it refused there, so nginx stops asking about it.
func NormalizeLDH(raw string) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("invalid name %q: empty", raw)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.':
		case c == '*':
			return "", fmt.Errorf("invalid name %q: wildcard", raw)
		case c == ':':
			return "", fmt.Errorf("invalid name %q: contains ':' (port or IPv6 literal)", raw)
		case c >= 0x80:
			return "", fmt.Errorf("invalid name %q: non-ASCII byte (use the xn-- form)", raw)
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("invalid name %q: control character", raw)
		default:
			return "", fmt.Errorf("invalid name %q: character %q not allowed", raw, c)
		}
		b[i] = c
	}
	name := string(b)
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return "", fmt.Errorf("invalid name %q: empty", raw)
	}
	if len(name) > MaxLength {
		return "", fmt.Errorf("invalid name %q: longer than %d characters", raw, MaxLength)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("invalid name %q: needs at least two labels", raw)
	}
	for _, label := range labels {
		switch {
		case label == "":
			return "", fmt.Errorf("invalid name %q: empty label", raw)
		case len(label) > MaxLabelLength:
			return "", fmt.Errorf("invalid name %q: label too long", raw)
		case label[0] == '-' || label[len(label)-1] == '-':
			return "", fmt.Errorf("invalid name %q: label starts or ends with a hyphen", raw)
		}
	}
	if allDigits(labels[len(labels)-1]) {
		return "", fmt.Errorf("invalid name %q: last label is numeric (IP address?)", raw)
	}
	return name, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// WildcardParent returns the parent whose wildcard "*.<parent>" covers
// name: name without its first label, when that still has at least two
// labels ("a.b.example" -> "b.example"; no "*.example", which no CA issues).
// A wildcard name has none. nginx's lookup applies the same rule
// (lua/certagent/names.lua).
func WildcardParent(name string) (string, bool) {
	if strings.HasPrefix(name, "*.") {
		return "", false
	}
	i := strings.IndexByte(name, '.')
	if i <= 0 || !strings.Contains(name[i+1:], ".") {
		return "", false
	}
	return name[i+1:], true
}

// Covers reports whether a certificate for certNames (normalized, wildcards
// as "*.<parent>") is valid for name, as a TLS client sees it: one of them is
// name, or the wildcard of name's WildcardParent (a wildcard covers one
// label). A wildcard name is covered only by itself.
func Covers(certNames []string, name string) bool {
	parent, wild := WildcardParent(name)
	for _, n := range certNames {
		if n == name || (wild && n == "*."+parent) {
			return true
		}
	}
	return false
}
