package main

import (
	"math"
	"time"

	"github.com/urfave/cli/v2"
)

func listCommand() *cli.Command {
	return &cli.Command{
		Name:   "list",
		Usage:  "list stored certificates, soonest expiry first",
		Flags:  withFlags(redisFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
		Action: listAction,
	}
}

func listAction(c *cli.Context) error {
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	entries, err := st.ListExpiring(c.Context, time.Unix(math.MaxInt32, 0), 0)
	if err != nil {
		return err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name
	}
	recs, errs, err := st.GetCerts(c.Context, names)
	if err != nil {
		return err
	}
	views := make([]certView, 0, len(names))
	for i, name := range names {
		if errs[i] != nil {
			views = append(views, certView{Name: name, Error: errs[i].Error()})
			continue
		}
		views = append(views, viewOf(name, recs[i]))
	}
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, views)
	}
	return writeTable(c.App.Writer, views, time.Now())
}
