package main

import (
	"fmt"
	"math"
	"time"

	"github.com/urfave/cli/v2"
)

// Statuses of a stored certificate as list and show report them.
const (
	statusValid   = "valid"
	statusFailing = "failing" // its last renewal failed; still served
	statusExpired = "expired" // still stored: nothing deletes it silently
)

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list stored certificates, soonest expiry first",
		Description: "One line per certificate (under its primary name): expiry, time left, status (valid, failing: " +
			"its last renewal failed, expired), issuer and fingerprint. --expiring reads only the part of the expiry " +
			"index it needs. Exits 2 on bad arguments.\n\nExamples:\n" +
			"  certagent list\n" +
			"  certagent list --expiring 72h\n" +
			"  certagent list --status failing --json",
		Flags: withFlags(redisFlags(), []cli.Flag{
			&cli.DurationFlag{Name: flagExpiring, Usage: "only certificates expiring within this duration (e.g. 72h)"},
			&cli.StringFlag{Name: flagStatus, Usage: "only certificates with this status: valid, failing or expired"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: listAction,
	}
}

func listAction(c *cli.Context) error {
	if err := noArgs(c, "list"); err != nil {
		return err
	}
	want := c.String(flagStatus)
	switch want {
	case "", statusValid, statusFailing, statusExpired:
	default:
		return cli.Exit(fmt.Sprintf("certagent list: unknown --%s %q (want valid, failing or expired)", flagStatus, want), exitUsage)
	}
	if c.Duration(flagExpiring) < 0 {
		return cli.Exit(fmt.Sprintf("certagent list: --%s must not be negative", flagExpiring), exitUsage)
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	now := time.Now()
	// No bound: an imported certificate may well expire after 2038.
	until := time.Unix(math.MaxInt64/2, 0)
	if d := c.Duration(flagExpiring); d > 0 {
		until = now.Add(d)
	}
	entries, err := st.ListExpiring(c.Context, until, 0)
	if err != nil {
		return err
	}
	failing := map[string]bool{}
	fails, err := st.FailingRenewals(c.Context, 0)
	if err != nil {
		return err
	}
	for _, f := range fails {
		failing[f.Name] = true
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
			if want == "" {
				views = append(views, certView{Name: name, Error: errs[i].Error()})
			}
			continue
		}
		v := viewOf(name, recs[i])
		v.Status = statusOf(v, failing[name], now)
		if want != "" && v.Status != want {
			continue
		}
		views = append(views, v)
	}
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, views)
	}
	return writeTable(c.App.Writer, views, now)
}

func statusOf(v certView, failing bool, now time.Time) string {
	switch {
	case !now.Before(v.NotAfter):
		return statusExpired
	case failing:
		return statusFailing
	}
	return statusValid
}
