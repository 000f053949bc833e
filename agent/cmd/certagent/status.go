package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "the fleet at a glance: streams, certificates, failing names, next renewals",
		Description: "Reads Redis only (no CA), a few keys whatever the number of certificates: the length of the " +
			"stream of requested names and how many entries agents hold unacknowledged, the stream of changes, how " +
			"many requested names the agents refused because no rule allows them or they are not valid names " +
			"(counted, not in the events stream), how many certificates are stored, expired or expiring within a " +
			"week, the names whose last renewal failed, the names whose last order failed (the failure memory of " +
			"`run`), and the next scheduled renewals. --check also parses every stored record, as `list --check` " +
			"does, and counts the corrupt ones (the first are listed with why): that takes time in proportion to " +
			"the certificates stored. Exits 1 when Redis cannot be read." +
			"\n\nExamples:\n  certagent status\n  certagent status --check\n  certagent status --next 20 --json",
		Flags: withFlags(redisFlags(), []cli.Flag{
			&cli.StringFlag{Name: flagGroup, EnvVars: envVars(flagGroup), Value: "certagent", Usage: "consumer group of the agents"},
			&cli.IntFlag{Name: flagNext, Value: 10, Usage: "how many failing names and next renewals to show"},
			&cli.BoolFlag{Name: flagCheck, Usage: "also parse every stored record and count the corrupt ones (slow with many)"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: statusAction,
	}
}

type statusEntry struct {
	Name  string    `json:"name"`
	At    time.Time `json:"at,omitzero"`
	Error string    `json:"error,omitempty"`
	Count int       `json:"failures,omitempty"`
}

type statusView struct {
	Requests         int64 `json:"requests"`
	Pending          int64 `json:"pending"`
	PendingConsumers int64 `json:"pending_consumers"`
	Changes          int64 `json:"changes"`
	// Refused counts the names refused without an event each, by kind
	// (policy, invalid).
	Refused      map[string]store.RefusalCount `json:"refused"`
	Certificates int64                         `json:"certificates"`
	Expired      int64                         `json:"expired"`
	ExpiringWeek int64                         `json:"expiring_within_7d"`
	// Corrupt and CorruptRecords are only known with --check.
	Corrupt         *int64        `json:"corrupt,omitempty"`
	CorruptRecords  []statusEntry `json:"corrupt_records,omitempty"`
	FailingRenewals []statusEntry `json:"failing_renewals"`
	FailingOrders   []statusEntry `json:"failing_orders"`
	NextRenewals    []statusEntry `json:"next_renewals"`
}

// statusAction prints the state of the stream, the schedule and the
// failures. Long because it fills the one statusView section by section,
// in the order the text output prints them.
func statusAction(c *cli.Context) error {
	if err := noArgs(c, "status"); err != nil {
		return err
	}
	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	ctx := c.Context
	limit := int64(max(c.Int(flagNext), 1))
	now := time.Now()
	v := statusView{FailingRenewals: []statusEntry{}, FailingOrders: []statusEntry{}, NextRenewals: []statusEntry{}}
	streams, err := st.StreamStatus(ctx, c.String(flagGroup))
	if err != nil {
		return failedf("certagent status: %v", err)
	}
	v.Requests, v.Pending, v.PendingConsumers, v.Changes = streams.Length, streams.Pending, streams.Consumers, streams.Changes
	if v.Refused, err = st.RefusalCounts(ctx); err != nil {
		return failedf("certagent status: %v", err)
	}
	var counts []int64
	if v.Certificates, counts, err = st.CertCounts(ctx, now.Unix(), now.Add(7*24*time.Hour).Unix()); err != nil {
		return failedf("certagent status: %v", err)
	}
	v.Expired, v.ExpiringWeek = counts[0], counts[1]-counts[0]
	if c.Bool(flagCheck) {
		if err := countCorrupt(ctx, st, &v, limit); err != nil {
			return failedf("certagent status: %v", err)
		}
	}

	failing, err := st.FailingRenewals(ctx, limit)
	if err != nil {
		return failedf("certagent status: %v", err)
	}
	for _, f := range failing {
		e := statusEntry{Name: f.Name, At: f.NotAfter}
		if state, err := st.GetRenewal(ctx, f.Name); err == nil {
			e.Error, e.Count = state.LastError, state.Failures
		}
		v.FailingRenewals = append(v.FailingRenewals, e)
	}
	orders, err := st.ListFailures(ctx, limit)
	if err != nil {
		return failedf("certagent status: %v", err)
	}
	for _, f := range orders {
		v.FailingOrders = append(v.FailingOrders, statusEntry{Name: f.Name, At: f.NextAttempt, Error: f.LastError, Count: f.Attempts})
	}
	next, err := st.NextRenewals(ctx, limit)
	if err != nil {
		return failedf("certagent status: %v", err)
	}
	for _, e := range next {
		v.NextRenewals = append(v.NextRenewals, statusEntry{Name: e.Name, At: e.NotAfter})
	}

	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, v)
	}
	w := c.App.Writer
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "requested names:\t%d in the stream, %d pending at %d agents\n", v.Requests, v.Pending, v.PendingConsumers)
	fmt.Fprintf(tw, "changes stream:\t%d entries\n", v.Changes)
	fmt.Fprintf(tw, "refused names:\t%s no rule allows, %s invalid\n",
		refusalLine(v.Refused[store.RefusedByPolicy]), refusalLine(v.Refused[store.RefusedInvalid]))
	corrupt := "corrupt not checked (--check)"
	if v.Corrupt != nil {
		corrupt = fmt.Sprintf("%d corrupt", *v.Corrupt)
	}
	fmt.Fprintf(tw, "certificates:\t%d stored, %d expired, %d expiring within 7 days, %s\n",
		v.Certificates, v.Expired, v.ExpiringWeek, corrupt)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.CorruptRecords) > 0 {
		// Only when there are: the agents order them again within minutes.
		fmt.Fprintf(w, "\ncorrupt records (the agents order them again):\n")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  NAME\tPROBLEM\n")
		for _, e := range v.CorruptRecords {
			fmt.Fprintf(tw, "  %s\t%s\n", e.Name, oneLine(e.Error))
		}
		_ = tw.Flush()
	}
	section := func(title, atLabel string, entries []statusEntry) {
		fmt.Fprintf(w, "\n%s:\n", title)
		if len(entries) == 0 {
			fmt.Fprintln(w, "  none")
			return
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  NAME\t%s\tFAILURES\tLAST ERROR\n", atLabel)
		for _, e := range entries {
			count := "-"
			if e.Count > 0 {
				count = fmt.Sprint(e.Count)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.Name, e.At.UTC().Format(time.RFC3339), count, oneLine(e.Error))
		}
		_ = tw.Flush()
	}
	section("failing renewals", "FAILED AT", v.FailingRenewals)
	section("failing orders", "NEXT ATTEMPT", v.FailingOrders)
	section("next renewal checks", "AT", v.NextRenewals)
	return nil
}

// refusalLine shows a refusal count and, when there was one, the time of
// the last.
func refusalLine(c store.RefusalCount) string {
	if c.Last.IsZero() {
		return fmt.Sprint(c.Count)
	}
	return fmt.Sprintf("%d (last %s)", c.Count, c.Last.UTC().Format(time.RFC3339))
}

// countCorrupt parses every stored record and counts the corrupt ones into
// v, keeping the first limit of them with why.
func countCorrupt(ctx context.Context, st *store.Store, v *statusView, limit int64) error {
	var n int64
	v.Corrupt, v.CorruptRecords = &n, []statusEntry{}
	return st.WalkCerts(ctx, time.Unix(math.MaxInt64/2, 0), func(r store.CheckedRecord) error {
		var corrupt *store.CorruptError
		if errors.As(r.Err, &corrupt) {
			n++
			if int64(len(v.CorruptRecords)) < limit {
				v.CorruptRecords = append(v.CorruptRecords, statusEntry{Name: r.Name, Error: corrupt.Reason})
			}
		}
		return nil
	})
}

func oneLine(s string) string {
	const max = 100
	out := []rune{}
	for _, r := range s {
		if r == '\n' || r == '\t' {
			r = ' '
		}
		out = append(out, r)
	}
	if len(out) > max {
		return string(out[:max-1]) + "…"
	}
	return string(out)
}
