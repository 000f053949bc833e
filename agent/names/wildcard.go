package names

import (
	"fmt"
	"strings"
)

// wildcardPrefix starts a wildcard name: "*.example.com" stands for every
// name one label below example.com, as in TLS.
const wildcardPrefix = "*."

// CutWildcard returns the parent of a wildcard name ("example.com" for
// "*.example.com") and true; for any other name, name and false.
// (WildcardParent goes the other way: the parent whose wildcard covers a
// name.)
func CutWildcard(name string) (parent string, ok bool) {
	return strings.CutPrefix(name, wildcardPrefix)
}

// Wildcard returns the wildcard name that stands for the names one label
// below parent.
func Wildcard(parent string) string { return wildcardPrefix + parent }

// NormalizeWildcard applies normalize to name, or to the parent of a
// wildcard name and puts the "*." back. The wildcard stands for the
// leftmost label only, so a parent that holds another "*" is refused
// naming the whole name, not the parent.
func NormalizeWildcard(name string, normalize func(string) (string, error)) (string, error) {
	parent, ok := CutWildcard(name)
	if !ok {
		return normalize(name)
	}
	if strings.Contains(parent, "*") {
		return "", fmt.Errorf("invalid name %q: only the leftmost label may be a wildcard", name)
	}
	normal, err := normalize(parent)
	if err != nil {
		return "", err
	}
	return Wildcard(normal), nil
}
