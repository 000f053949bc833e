package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/certagent/certagent/agent/acmeclient"
)

func issueCommand() *cli.Command {
	return &cli.Command{
		Name:      "issue",
		Usage:     "obtain certificates now and wait for the result",
		ArgsUsage: "NAME... | --from-file FILE",
		Description: "Orders one certificate per NAME (or one for all of them with --san), stores it where nginx " +
			"serves it and prints it. The allow rules of `run` do not apply: the operator asks. --from-file reads " +
			"one certificate per line: its names separated by spaces or commas, the first being the primary name " +
			"(a SAN set); blank lines and lines starting with # are skipped; every line is checked before anything " +
			"is ordered. On a terminal a progress bar shows how far a bulk run is; otherwise one line per " +
			"certificate is printed as it completes. Exits 1 when any order fails, 2 on bad arguments or a bad " +
			"file.\n\nExamples:\n" +
			"  certagent issue shop.example.com\n" +
			"  certagent issue --san example.com www.example.com\n" +
			"  CLOUDFLARE_DNS_API_TOKEN=... certagent issue --dns-provider cloudflare '*.example.com'\n" +
			"  certagent issue --from-file names.txt --workers 4",
		Flags: withFlags(redisFlags(), acmeFlags(), peerFlags(), []cli.Flag{
			&cli.BoolFlag{Name: flagSAN, Usage: "one certificate with every NAME (at most 100), the first as its subject"},
			&cli.StringFlag{Name: flagFromFile, Usage: "file with one certificate (its names) per line; - for standard input"},
			&cli.IntFlag{Name: flagWorkers, Value: 4, Usage: "orders at once with --from-file"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: issueAction,
	}
}

// issueAction orders the certificates of the arguments or of a file.
// Long because the workers, the progress bar and the final report share
// the views and the failure count it holds.
func issueAction(c *cli.Context) error {
	orders, err := issueOrders(c)
	if err != nil {
		return err
	}
	s, err := openSession(c)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, mgr := s.ctx, s.mgr

	workers := 1
	if c.String(flagFromFile) != "" {
		workers = max(c.Int(flagWorkers), 1)
	}
	out, errOut := c.App.Writer, c.App.ErrWriter
	var progress *progressBar
	if !c.Bool(flagJSON) && c.String(flagFromFile) != "" && isTerminal(errOut) {
		progress = &progressBar{w: errOut, total: len(orders)}
	}
	views := make([]certView, len(orders))
	var mu sync.Mutex
	failed := 0
	report := func(v certView) {
		mu.Lock()
		defer mu.Unlock()
		if v.Error != "" {
			failed++
		}
		switch {
		case c.Bool(flagJSON):
		case progress != nil:
			progress.step(v.Error != "")
		case v.Error != "":
			fmt.Fprintf(errOut, "failed  %s: %s\n", v.Name, v.Error)
		default:
			fmt.Fprintf(out, "issued  %s  names=%v  not_after=%s  sha256=%s\n",
				v.Name, v.Names, v.NotAfter.Format("2006-01-02T15:04:05Z"), v.Fingerprint)
		}
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				rec, err := mgr.Issue(ctx, orders[i])
				if err != nil {
					views[i] = certView{Name: orders[i][0], Error: err.Error()}
				} else {
					views[i] = viewOf(orders[i][0], rec)
				}
				report(views[i])
			}
		}()
	}
	for i := range orders {
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	if c.Bool(flagJSON) {
		if err := writeJSON(out, views); err != nil {
			return err
		}
	}
	if progress != nil {
		progress.done()
		for _, v := range views {
			if v.Error != "" {
				fmt.Fprintf(errOut, "failed  %s: %s\n", v.Name, v.Error)
			}
		}
	}
	if ctx.Err() != nil {
		return failedf("certagent issue: interrupted")
	}
	if failed > 0 {
		return failedf("certagent issue: %d of %d orders failed", failed, len(orders))
	}
	return nil
}

// issueOrders returns the certificates to order, each as its names with the
// primary first, from the arguments or --from-file. Nothing is ordered when
// any name is invalid.
func issueOrders(c *cli.Context) ([][]string, error) {
	// Flags may follow the names (issue a.example b.example --san).
	args, err := interspersedFlags(c)
	if err != nil {
		return nil, err
	}
	file := c.String(flagFromFile)
	if (len(args) == 0) == (file == "") {
		return nil, usageErrorf("certagent issue: name at least one NAME, or give --from-file")
	}
	if file == "" {
		var requested []string
		for _, arg := range args {
			name, err := storedName(arg)
			if err != nil {
				return nil, usageErrorf("certagent issue: %v", err)
			}
			requested = append(requested, name)
		}
		if c.Bool(flagSAN) {
			if err := checkSANCount(requested); err != nil {
				return nil, usageErrorf("certagent issue: --san: %v; nothing was ordered", err)
			}
			return [][]string{requested}, nil
		}
		orders := make([][]string, len(requested))
		for i, name := range requested {
			orders[i] = []string{name}
		}
		return orders, nil
	}
	var r io.Reader = os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, usageErrorf("certagent issue: %v", err)
		}
		defer f.Close()
		r = f
	}
	orders, problems := parseNamesFile(r)
	if len(problems) > 0 {
		return nil, usageErrorf("certagent issue: nothing was ordered:\n  %s", strings.Join(problems, "\n  "))
	}
	if len(orders) == 0 {
		return nil, usageErrorf("certagent issue: %s names no certificate", file)
	}
	return orders, nil
}

// parseNamesFile reads one SAN set per line and reports every bad line.
func parseNamesFile(r io.Reader) (orders [][]string, problems []string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		var set []string
		for _, field := range strings.FieldsFunc(text, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			name, err := storedName(field)
			if err != nil {
				problems = append(problems, fmt.Sprintf("line %d: %v", line, err))
				continue
			}
			if !slices.Contains(set, name) {
				set = append(set, name)
			}
		}
		if err := checkSANCount(set); err != nil {
			problems = append(problems, fmt.Sprintf("line %d: %v", line, err))
			continue
		}
		if len(set) > 0 {
			orders = append(orders, set)
		}
	}
	if err := sc.Err(); err != nil {
		problems = append(problems, err.Error())
	}
	return orders, problems
}

// checkSANCount refuses a certificate of more names (counted once each) than
// a CA accepts in one order, before anything is ordered.
func checkSANCount(names []string) error {
	var distinct []string
	for _, name := range names {
		if !slices.Contains(distinct, name) {
			distinct = append(distinct, name)
		}
	}
	if len(distinct) > acmeclient.MaxNamesPerOrder {
		return fmt.Errorf("%d names: %w", len(distinct), acmeclient.ErrTooManyNames)
	}
	return nil
}

// isTerminal reports whether w is a terminal: redirected output gets plain
// lines instead of a bar. Asking the terminal driver (x/term), not the file
// mode: /dev/null is a character device too.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar redraws one line: [#####.....] done/total, failures.
type progressBar struct {
	w                      io.Writer
	total, finished, fails int
}

func (p *progressBar) step(failed bool) {
	p.finished++
	if failed {
		p.fails++
	}
	const width = 30
	filled := width * p.finished / max(p.total, 1)
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d issued, %d failed", strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		p.finished-p.fails, p.total, p.fails)
}

func (p *progressBar) done() { fmt.Fprintln(p.w) }
