package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// A name IDNA2008 disallows, in either form, or an xn-- label that is not
// punycode, is a usage error before anything is ordered.
func TestIssueRefusesWhatIDNA2008Disallows(t *testing.T) {
	for arg, want := range map[string]string{
		"☃.example.com":       "U+2603",
		"xn--n3h.example.com": "IDNA2008 disallows",
		"xn--a.example.com":   "not a valid A-label",
		"i❤.ws":               "U+2764",
	} {
		_, err := issueOrdersOf(arg)
		var exit cli.ExitCoder
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(err.Error(), want) ||
			!strings.HasPrefix(err.Error(), "certagent issue: invalid name ") {
			t.Errorf("issue %s: %v, want exit %d and an error naming %q", arg, err, exitUsage, want)
		}
	}
	if got, err := issueOrdersOf("bücher.example"); err != nil || got[0][0] != "xn--bcher-kva.example" {
		t.Errorf("issue bücher.example: %v %v", got, err)
	}
}
