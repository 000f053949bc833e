package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/store"
)

func renewCommand() *cli.Command {
	return &cli.Command{
		Name:      "renew",
		Usage:     "renew stored certificates now: the named ones, or every one that is due",
		ArgsUsage: "NAME... | --due",
		Description: "Renews the certificate stored under each NAME if it is due (inside the CA's ARI window, or a " +
			"third of its lifetime left), or whatever its dates with --force. With --due, renews every certificate " +
			"whose renewal time has come, as `run` would. The certificate being renewed stays served until the new " +
			"one is stored. Exits 1 when any renewal fails, 2 on bad arguments.\n\nExamples:\n" +
			"  certagent renew shop.example.com\n" +
			"  certagent renew --force shop.example.com '*.example.com'\n" +
			"  certagent renew --due --json",
		Flags: withFlags(redisFlags(), acmeFlags(), peerFlags(), []cli.Flag{
			&cli.BoolFlag{Name: flagDue, Usage: "renew every certificate that is due"},
			&cli.BoolFlag{Name: flagForce, Usage: "renew the named certificates even if they are not due"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: renewAction,
	}
}

type renewView struct {
	certView
	Outcome string     `json:"outcome"`
	RenewAt *time.Time `json:"renew_at,omitempty"`
}

func renewAction(c *cli.Context) error {
	requested, err := nameArgs(c, "renew")
	if err != nil {
		return err
	}
	due := c.Bool(flagDue)
	if due == (len(requested) > 0) {
		return usageErrorf("certagent renew: name the certificates to renew, or give --due")
	}
	if due && c.Bool(flagForce) {
		return usageErrorf("certagent renew: --force applies to named certificates, not to --due")
	}
	s, err := openSession(c)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, st, mgr, log := s.ctx, s.store, s.mgr, s.log
	renewer := manager.NewRenewer(manager.RenewerConfig{Manager: mgr, Logger: log})
	if due {
		entries, err := st.RenewalDue(ctx, time.Now(), 0)
		if err != nil {
			return err
		}
		for _, e := range entries {
			requested = append(requested, e.Name)
		}
	}

	var views []renewView
	failed := 0
	for _, name := range requested {
		rec, outcome, err := renewer.RenewName(ctx, name, c.Bool(flagForce))
		v := renewView{certView: certView{Name: name}, Outcome: string(outcome)}
		if rec != nil {
			v.certView = viewOf(name, rec)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			failed++
			v.Outcome, v.Error = "failed", fmt.Sprintf("no certificate stored for %s", name)
		case err != nil:
			failed++
			v.Outcome, v.Error = string(manager.Failed), err.Error()
		case outcome == manager.NotDue:
			if state, err := st.GetRenewal(ctx, rec.Primary()); err == nil && !state.RenewAt.IsZero() {
				at := state.RenewAt.UTC()
				v.RenewAt = &at
			}
		}
		views = append(views, v)
	}
	if c.Bool(flagJSON) {
		if views == nil {
			views = []renewView{}
		}
		if err := writeJSON(c.App.Writer, views); err != nil {
			return err
		}
	} else {
		for _, v := range views {
			switch {
			case v.Error != "":
				fmt.Fprintf(c.App.ErrWriter, "failed    %s: %s\n", v.Name, v.Error)
			case v.RenewAt != nil:
				fmt.Fprintf(c.App.Writer, "not due   %s  renew_at=%s (--force renews now)\n", v.Name, v.RenewAt.Format(time.RFC3339))
			default:
				fmt.Fprintf(c.App.Writer, "%-9s %s  not_after=%s  serial=%s\n", v.Outcome, v.Name, v.NotAfter.Format(time.RFC3339), v.Serial)
			}
		}
		if due && len(views) == 0 {
			fmt.Fprintln(c.App.Writer, "nothing is due")
		}
	}
	if failed > 0 {
		return failedf("certagent renew: %d of %d renewals failed", failed, len(views))
	}
	return nil
}
