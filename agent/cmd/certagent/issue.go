package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/names"
)

func issueCommand() *cli.Command {
	return &cli.Command{
		Name:      "issue",
		Usage:     "obtain certificates now and wait for the result",
		ArgsUsage: "NAME...",
		Description: "Orders one certificate per NAME (or one for all of them with --san), stores it where nginx " +
			"serves it and prints it. The allow rules of `run` do not apply: the operator asks. Exits non-zero " +
			"when any order fails.",
		Flags: withFlags(redisFlags(), acmeFlags(), []cli.Flag{
			&cli.BoolFlag{Name: flagSAN, Usage: "one certificate with every NAME, the first as its subject"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: issueAction,
	}
}

func issueAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.Exit("certagent issue: name at least one NAME", 2)
	}
	var requested []string
	for _, arg := range c.Args().Slice() {
		name, err := names.Normalize(arg)
		if err != nil {
			return cli.Exit(fmt.Sprintf("certagent issue: %v", err), 2)
		}
		requested = append(requested, name)
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	ctx, stop := withSignals(c.Context)
	defer stop()
	mgr, err := newManager(ctx, c, st, log)
	if err != nil {
		return err
	}

	orders := [][]string{requested}
	if !c.Bool(flagSAN) {
		orders = orders[:0]
		for _, name := range requested {
			orders = append(orders, []string{name})
		}
	}
	var views []certView
	failed := 0
	for _, order := range orders {
		rec, err := mgr.Issue(ctx, order)
		if err != nil {
			failed++
			views = append(views, certView{Name: order[0], Error: err.Error()})
			continue
		}
		views = append(views, viewOf(order[0], rec))
	}

	out := c.App.Writer
	if c.Bool(flagJSON) {
		if err := writeJSON(out, views); err != nil {
			return err
		}
	} else {
		for _, v := range views {
			if v.Error != "" {
				fmt.Fprintf(c.App.ErrWriter, "failed  %s: %s\n", v.Name, v.Error)
				continue
			}
			fmt.Fprintf(out, "issued  %s  names=%v  not_after=%s  sha256=%s\n",
				v.Name, v.Names, v.NotAfter.Format("2006-01-02T15:04:05Z"), v.Fingerprint)
		}
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("certagent issue: %d of %d orders failed", failed, len(orders)), 1)
	}
	return nil
}
