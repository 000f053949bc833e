package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

func deleteCommand() *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Usage:     "remove the certificate stored for a name (and its copies under its other names)",
		ArgsUsage: "NAME",
		Description: "Deletes the certificate stored under NAME, its copies under the certificate's other names, its " +
			"expiry and renewal entries, and tells nginx through the stream of changes: nginx stops serving it within " +
			"its freshness bound. It is not revoked (see `revoke`). If the name is still requested and allowed, `run` " +
			"orders a new one. Exits 1 when no certificate is stored, 2 on bad arguments.\n\nExamples:\n" +
			"  certagent delete old-shop.example.com\n" +
			"  certagent delete '*.example.com'",
		Flags:  withFlags(redisFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
		Action: deleteAction,
	}
}

func deleteAction(c *cli.Context) error {
	args, err := nameArgs(c, "delete")
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usageErrorf("certagent delete: name exactly one NAME")
	}
	st, log, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	events, _, stopEvents, err := newTelemetry(c, st, log)
	if err != nil {
		return err
	}
	defer stopEvents()
	deleted, err := st.DeleteCert(c.Context, args[0])
	if errors.Is(err, store.ErrNotFound) {
		return failedf("certagent delete: no certificate stored for %s", args[0])
	}
	if err != nil {
		return err
	}
	events.Emit(c.Context, telemetry.Event{Type: telemetry.EventDeleted, Name: args[0], Names: deleted})
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, map[string]any{"deleted": deleted})
	}
	fmt.Fprintf(c.App.Writer, "deleted   %s\n", strings.Join(deleted, " "))
	return nil
}
