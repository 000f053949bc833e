package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/policy"
)

// allowCommand manages the allowlist in Redis. Every running agent reads it
// on the next requested name, and a change voids the fleet's cached refusals,
// so a name added here is issued on its next miss.
func allowCommand() *cli.Command {
	return &cli.Command{
		Name:  "allow",
		Usage: "manage the fleet's allowlist in Redis (names and *.parent rules that may get a certificate)",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "allow names or *.parent rules (Unicode names are stored in their xn-- form)",
				ArgsUsage: "RULE...",
				Flags:     redisFlags(),
				Action:    allowChange(true),
			},
			{
				Name:      "rm",
				Usage:     "remove rules from the allowlist",
				ArgsUsage: "RULE...",
				Flags:     redisFlags(),
				Action:    allowChange(false),
			},
			{
				Name:   "ls",
				Usage:  "list the allowlist",
				Flags:  withFlags(redisFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
				Action: allowList,
			},
		},
	}
}

func allowChange(add bool) cli.ActionFunc {
	return func(c *cli.Context) error {
		verb := map[bool]string{true: "add", false: "rm"}[add]
		args, err := interspersedFlags(c)
		if err != nil {
			return err
		}
		if len(args) == 0 {
			return usageErrorf("certagent allow %s: name at least one RULE", verb)
		}
		// Every rule is checked before anything is written: one typo changes nothing.
		rules := make([]string, 0, len(args))
		for _, raw := range args {
			rule, err := policy.ParseRule(raw)
			if err != nil {
				return usageErrorf("certagent allow %s: %v", verb, err)
			}
			rules = append(rules, rule)
		}
		st, _, err := openStoreAndLogger(c)
		if err != nil {
			return err
		}
		defer closeStore(st)
		var n int64
		if add {
			n, err = st.AddAllowRules(c.Context, rules...)
		} else {
			n, err = st.RemoveAllowRules(c.Context, rules...)
		}
		if err != nil {
			return err
		}
		what := map[bool]string{true: "added", false: "removed"}[add]
		fmt.Fprintf(c.App.Writer, "%s %d of %d: %s\n", what, n, len(rules), strings.Join(rules, " "))
		return nil
	}
}

func allowList(c *cli.Context) error {
	if err := noArgs(c, "allow ls"); err != nil {
		return err
	}
	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	rules, err := st.AllowRules(c.Context)
	if err != nil {
		return err
	}
	if c.Bool(flagJSON) {
		if rules == nil {
			rules = []string{}
		}
		return writeJSON(c.App.Writer, rules)
	}
	for _, r := range rules {
		fmt.Fprintln(c.App.Writer, r)
	}
	return nil
}
