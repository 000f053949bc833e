package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
)

func showCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show the certificate stored for a name (never its private key)",
		ArgsUsage: "NAME",
		Description: "Prints the certificate stored under NAME (any of its names, or *.parent for a wildcard): names, " +
			"dates, issuer, serial, fingerprint, CA, status (valid, failing, expired, or corrupt with the reason: the " +
			"chain or the key does not parse, the key is not the certificate's, the certificate does not cover the " +
			"name), and what the fleet remembers of the name: failed orders, a cached refusal. Exits 1 when nothing " +
			"usable is stored for NAME (none, or a corrupt record), 2 on a bad NAME.\n\nExamples:\n" +
			"  certagent show shop.example.com\n  certagent show '*.example.com' --json",
		Flags:  withFlags(redisFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
		Action: showAction,
	}
}

// showView is a certificate (if any) with what the fleet remembers about the
// name: its failures and a cached refusal.
type showView struct {
	Name string `json:"name"`
	*certView
	Failure *store.Failure `json:"failure,omitempty"`
	Denied  *deniedView    `json:"denied,omitempty"`
}

type deniedView struct {
	Reason string    `json:"reason"`
	Until  time.Time `json:"until"`
}

func showAction(c *cli.Context) error {
	args, err := nameArgs(c, "show")
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usageErrorf("certagent show: name exactly one NAME")
	}
	name := args[0]
	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	v := showView{Name: name}
	now := time.Now()
	rec, err := st.GetCert(c.Context, name)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrCorrupt) {
		return err
	}
	if cv, ok := storedView(name, rec, err, renewalFailing(c, st, rec), now); ok {
		v.certView = &cv
	}
	if v.Failure, err = st.GetFailure(c.Context, name); errors.Is(err, store.ErrNotFound) {
		v.Failure = nil
	} else if err != nil {
		return err
	}
	denial, err := st.Denied(c.Context, name)
	if err != nil {
		return err
	}
	if denial != nil {
		v.Denied = &deniedView{Reason: denial.Reason, Until: denial.Until.UTC()}
	}
	if c.Bool(flagJSON) {
		if err := writeJSON(c.App.Writer, v); err != nil {
			return err
		}
	} else {
		if v.certView != nil {
			if err := writeDetails(c.App.Writer, *v.certView, now); err != nil {
				return err
			}
		}
		writeState(c.App.Writer, v, now)
	}
	switch {
	case v.certView == nil:
		return failedf("certagent show: no certificate stored for %s", name)
	case v.Status == statusCorrupt:
		return failedf("certagent show: the record stored for %s is corrupt (nginx serves the fallback): %s",
			name, v.Reason)
	}
	return nil
}

// renewalFailing reports whether the last renewal of rec failed. A renewal
// state that cannot be read is not: show goes on without it.
func renewalFailing(c *cli.Context, st *store.Store, rec *store.CertRecord) bool {
	if rec == nil {
		return false
	}
	state, err := st.GetRenewal(c.Context, rec.Primary())
	return err == nil && state.Failures > 0
}

// writeState prints the failure memory and cached refusal of a name.
func writeState(w io.Writer, v showView, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if f := v.Failure; f != nil {
		fmt.Fprintf(tw, "last error:\t%s\n", f.LastError)
		fmt.Fprintf(tw, "failed attempts:\t%d (last %s)\n", f.Attempts, f.LastAttempt.Format(time.RFC3339))
		next := "now"
		if f.NextAttempt.After(now) {
			next = "in " + left(f.NextAttempt.Sub(now))
		}
		fmt.Fprintf(tw, "next attempt:\t%s (%s)\n", f.NextAttempt.Format(time.RFC3339), next)
	}
	if d := v.Denied; d != nil {
		fmt.Fprintf(tw, "refused:\t%s (cached until %s)\n", d.Reason, d.Until.Format(time.RFC3339))
	}
	_ = tw.Flush()
}
