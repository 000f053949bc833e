package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"text/tabwriter"
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

// tableBlock is how many lines of the table are aligned together: the
// table is written as it is read, so memory stays flat however many
// certificates are stored.
const tableBlock = 500

func listCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list stored certificates, soonest expiry first",
		Description: "One line per certificate (under its primary name): expiry, time left, status (valid, failing: " +
			"its last renewal failed, expired, corrupt: the record cannot be served and nginx serves the fallback), " +
			"issuer, fingerprint and, for a corrupt record, why. It reads only the fields it shows, a page at a " +
			"time, and writes as it reads: memory stays flat however many are stored. Such a record is corrupt when " +
			"its fields do not decode or its key in Redis is not a hash; --check also parses every record's chain " +
			"and key (that the key is the certificate's, that the certificate covers its names), as nginx does, " +
			"reading the keys (never shown); --status corrupt implies it. --expiring reads only the part of the " +
			"expiry index it needs. --limit N shows N lines and then, on stderr, the --after NAME that continues; " +
			"--after NAME starts after that name. --json writes one JSON array, an element as each record is read. " +
			"Exits 2 on bad arguments, 1 when --after names no stored certificate." +
			"\n\nExamples:\n" +
			"  certagent list\n" +
			"  certagent list --limit 100\n" +
			"  certagent list --limit 100 --after c99.example.com\n" +
			"  certagent list --expiring 72h\n" +
			"  certagent list --status corrupt --json",
		Flags: withFlags(redisFlags(), []cli.Flag{
			&cli.DurationFlag{Name: flagExpiring, Usage: "only certificates expiring within this duration (e.g. 72h)"},
			&cli.StringFlag{Name: flagStatus, Usage: "only certificates with this status: valid, failing, expired or corrupt"},
			&cli.IntFlag{Name: flagLimit, Usage: "show at most this many (0: all)"},
			&cli.StringFlag{Name: flagAfter, Usage: "start after this name (the last one of the previous page)"},
			&cli.BoolFlag{Name: flagCheck, Usage: "also parse each record's chain and key, as nginx does (slower)"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON: an array, written as the records are read"},
		}),
		Action: listAction,
	}
}

// errPageFull ends a walk once --limit lines are shown and one more matched.
var errPageFull = errors.New("page full")

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
	limit := c.Int(flagLimit)
	if limit < 0 {
		return usageErrorf("certagent list: --%s must not be negative", flagLimit)
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
	walk := st.ListCerts
	if c.Bool(flagCheck) || want == statusCorrupt {
		walk = st.WalkCertsFrom
	}
	failing := failingNames(c, st)
	buf := bufio.NewWriter(c.App.Writer)
	var out listWriter = newTableWriter(buf, now)
	if c.Bool(flagJSON) {
		out = &jsonArrayWriter{w: buf}
	}
	shown, last := 0, ""
	err = walk(c.Context, c.String(flagAfter), until, func(r store.CheckedRecord) error {
		v, ok := storedView(r.Name, r.Record, r.Err, failing[r.Name], now)
		if !ok || (want != "" && v.Status != want) {
			return nil
		}
		if limit > 0 && shown == limit {
			return errPageFull
		}
		shown, last = shown+1, r.Name
		return out.add(v)
	})
	if err != nil && !errors.Is(err, errPageFull) {
		// What was written so far stays written: a listing cut short says so.
		_ = buf.Flush()
		return failedf("certagent list: %v", err)
	}
	if err := out.close(); err != nil {
		return err
	}
	if err := buf.Flush(); err != nil {
		return err
	}
	if errors.Is(err, errPageFull) {
		fmt.Fprintf(c.App.ErrWriter, "certagent list: more after this page: --%s %s\n", flagAfter, last)
	}
	return nil
}

// listWriter writes list's output one certificate at a time.
type listWriter interface {
	add(certView) error
	close() error
}

// jsonArrayWriter writes a JSON array an element at a time, indented as
// writeJSON indents a whole one.
type jsonArrayWriter struct {
	w io.Writer
	n int
}

func (a *jsonArrayWriter) add(v certView) error {
	b, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return err
	}
	sep := ",\n  "
	if a.n == 0 {
		sep = "[\n  "
	}
	a.n++
	if _, err := io.WriteString(a.w, sep); err != nil {
		return err
	}
	_, err = a.w.Write(b)
	return err
}

func (a *jsonArrayWriter) close() error {
	end := "\n]\n"
	if a.n == 0 {
		end = "[]\n"
	}
	_, err := io.WriteString(a.w, end)
	return err
}

// tableWriter prints one aligned line per certificate, tableBlock lines
// aligned together; a corrupt record shows what of it could be read, and
// why it cannot be served.
type tableWriter struct {
	w   io.Writer
	tw  *tabwriter.Writer
	now time.Time
	n   int
}

func newTableWriter(w io.Writer, now time.Time) *tableWriter {
	t := &tableWriter{w: w, now: now, tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	fmt.Fprintln(t.tw, "NAME\tNOT AFTER\tLEFT\tSTATUS\tISSUER\tFINGERPRINT\tPROBLEM")
	return t
}

func (t *tableWriter) add(v certView) error {
	notAfter, remaining := "-", "-"
	if !v.NotAfter.IsZero() {
		notAfter, remaining = v.NotAfter.Format(time.RFC3339), left(v.NotAfter.Sub(t.now))
	}
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, notAfter, remaining, v.Status,
		dash(v.Issuer), dash(shortFingerprint(v.Fingerprint)), oneLine(v.Reason))
	if t.n++; t.n%tableBlock == 0 {
		return t.tw.Flush()
	}
	return nil
}

func (t *tableWriter) close() error { return t.tw.Flush() }

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
