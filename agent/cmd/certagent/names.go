package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/names"
)

// storedName normalizes a NAME argument that refers to a stored certificate:
// any name an operator may type, or a wildcard "*.parent".
func storedName(raw string) (string, error) {
	if rest, ok := strings.CutPrefix(raw, "*."); ok {
		parent, err := names.FromOperator(rest)
		if err != nil {
			return "", err
		}
		return "*." + parent, nil
	}
	return names.FromOperator(raw)
}

// nameArgs normalizes every argument of c, or returns a usage error.
func nameArgs(c *cli.Context, command string) ([]string, error) {
	var out []string
	for _, arg := range c.Args().Slice() {
		name, err := storedName(arg)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("certagent %s: %v", command, err), exitUsage)
		}
		out = append(out, name)
	}
	return out, nil
}
