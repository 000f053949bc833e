package main

import (
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/names"
)

// storedName normalizes a NAME argument that refers to a stored certificate:
// any name an operator may type, or a wildcard "*.parent".
func storedName(raw string) (string, error) {
	return names.NormalizeWildcard(raw, names.FromOperator)
}

// nameArgs normalizes every argument of c (flags among them are applied),
// or returns a usage error.
func nameArgs(c *cli.Context, command string) ([]string, error) {
	args, err := interspersedFlags(c)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, arg := range args {
		name, err := storedName(arg)
		if err != nil {
			return nil, usageErrorf("certagent %s: %v", command, err)
		}
		out = append(out, name)
	}
	return out, nil
}

// interspersedFlags lets flags follow the arguments, as in `export NAME
// --out DIR`: urfave/cli v2 stops parsing flags at the first argument, so the
// flags left among the arguments are set here and the rest returned.
// (urfave/cli v3 parses flags anywhere; moving to it, which changes every
// command's signature, removes this function.)
func interspersedFlags(c *cli.Context) ([]string, error) {
	known := map[string]cli.Flag{}
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			known[n] = f
		}
	}
	var rest []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			rest = append(rest, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			rest = append(rest, arg)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		f, ok := known[name]
		if !ok {
			return nil, usageErrorf("certagent %s: unknown flag %s", c.Command.Name, arg)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasValue {
			value = "true"
		} else if !hasValue {
			if i+1 == len(args) {
				return nil, usageErrorf("certagent %s: flag %s needs a value", c.Command.Name, arg)
			}
			i++
			value = args[i]
		}
		if err := c.Set(name, value); err != nil {
			return nil, usageErrorf("certagent %s: %s: %v", c.Command.Name, arg, err)
		}
	}
	return rest, nil
}

// noArgs applies the flags among the arguments of a command that takes no
// arguments, and refuses anything else, so that `list foo --json` is an
// error rather than a table that ignored both.
func noArgs(c *cli.Context, command string) error {
	args, err := interspersedFlags(c)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return usageErrorf("certagent %s: takes no arguments, got %q", command, strings.Join(args, " "))
	}
	return nil
}
