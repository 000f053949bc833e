package main

import (
	"fmt"
	"math"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
)

// Statuses of a stored certificate as list and show report them.
const (
	statusValid   = "valid"
	statusFailing = "failing" // its last renewal failed; still served
	statusExpired = "expired" // still stored: nothing deletes it silently
	statusCorrupt = "corrupt" // nginx cannot serve it (the fallback is served); the agent orders it again
)

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list stored certificates, soonest expiry first",
		Description: "One line per certificate (under its primary name): expiry, time left, status (valid, failing: " +
			"its last renewal failed, expired, corrupt: nginx cannot serve the record and serves the fallback), issuer, " +
			"fingerprint and, for a corrupt record, why. Every record is parsed: its chain, its key, that the key is the " +
			"certificate's and that the certificate covers its names. A key of the wrong type is listed as corrupt " +
			"under its name. --expiring reads only the part of the expiry index it needs. Exits 2 on bad arguments." +
			"\n\nExamples:\n" +
			"  certagent list\n" +
			"  certagent list --expiring 72h\n" +
			"  certagent list --status corrupt --json",
		Flags: withFlags(redisFlags(), []cli.Flag{
			&cli.DurationFlag{Name: flagExpiring, Usage: "only certificates expiring within this duration (e.g. 72h)"},
			&cli.StringFlag{Name: flagStatus, Usage: "only certificates with this status: valid, failing, expired or corrupt"},
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
	case "", statusValid, statusFailing, statusExpired, statusCorrupt:
	default:
		return usageErrorf("certagent list: unknown --%s %q (want valid, failing, expired or corrupt)", flagStatus, want)
	}
	if c.Duration(flagExpiring) < 0 {
		return usageErrorf("certagent list: --%s must not be negative", flagExpiring)
	}
	st, _, err := openStoreAndLogger(c)
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
	failing := failingNames(c, st)
	views := []certView{}
	err = st.WalkCerts(c.Context, until, func(r store.CheckedRecord) error {
		v, ok := storedView(r.Name, r.Record, r.Err, failing[r.Name], now)
		if ok && (want == "" || v.Status == want) {
			views = append(views, v)
		}
		return nil
	})
	if err != nil {
		return failedf("certagent list: %v", err)
	}
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, views)
	}
	return writeTable(c.App.Writer, views, now)
}

// failingNames returns the names whose last renewal failed. When the index
// cannot be read (a key of the wrong type), it says so, naming the key, and
// the list goes on without it.
func failingNames(c *cli.Context, st *store.Store) map[string]bool {
	failing := map[string]bool{}
	fails, err := st.FailingRenewals(c.Context, 0)
	if err != nil {
		fmt.Fprintf(c.App.ErrWriter, "certagent: skipping %s (failing renewals not shown): %v\n", st.Keys().RenewalFailures(), err)
	}
	for _, f := range fails {
		failing[f.Name] = true
	}
	return failing
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
