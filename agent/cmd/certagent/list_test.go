package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// runList runs `certagent list args...` in this process against redisURL.
func runList(t *testing.T, redisURL string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := &cli.App{Commands: []*cli.Command{listCommand()}, Writer: &out, ErrWriter: &errOut,
		ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run(append([]string{"certagent", "list", "--redis-url", redisURL}, args...))
	var exit cli.ExitCoder
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
		fmt.Fprintln(&errOut, exit.Error())
	case err != nil:
		t.Fatalf("list %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// storeForList stores count certificates (one certificate under many
// names: list does not parse it unless --check), a few at each not-after,
// and returns the names soonest expiry first.
func storeForList(t *testing.T, r *testenv.Redis, count int) []string {
	t.Helper()
	st := store.New(r.Client, store.Keys{})
	base := time.Now().Add(40 * 24 * time.Hour).Truncate(time.Second)
	leaf := testenv.NewCert(t, testenv.CertSpec{CommonName: "list.example.test", DNSNames: []string{"list.example.test"},
		NotAfter: base})
	tmpl, err := store.NewCertRecord(leaf.CertPEM, leaf.KeyPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, count)
	for i := range count {
		rec := *tmpl
		// Zero-padded: the index orders equal not-afters by name.
		names[i] = fmt.Sprintf("c%05d.example.test", i)
		rec.Names = []string{names[i]}
		rec.NotAfter = base.Add(time.Duration(i/5) * time.Hour)
		rec.IssuedAt = time.Now()
		if err := st.PutCert(context.Background(), &rec); err != nil {
			t.Fatal(err)
		}
	}
	return names
}

type listedCert struct {
	Name     string    `json:"name"`
	NotAfter time.Time `json:"not_after"`
	Issuer   string    `json:"issuer"`
	Status   string    `json:"status"`
}

func decodeList(t *testing.T, out string) []string {
	t.Helper()
	var views []listedCert
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		t.Fatalf("list --json is not one JSON array: %v\n%.300s", err, out)
	}
	names := make([]string, len(views))
	for i, v := range views {
		if v.Status != statusValid || v.NotAfter.IsZero() || v.Issuer == "" {
			t.Errorf("listed %+v, want a valid certificate with its dates and issuer", v)
		}
		names[i] = v.Name
	}
	return names
}

// A store of more than two pages: --json is one array in expiry order with
// every certificate and neither chain nor key; --limit and --after page
// through it to the same names, each page naming the --after of the next;
// the table pages the same way.
func TestListPagesAStoreLargerThanAPage(t *testing.T) {
	r := testenv.StartRedis(t)
	want := storeForList(t, r, 1203)

	out, errOut, code := runList(t, r.URL, "--json")
	if code != 0 || errOut != "" {
		t.Fatalf("list --json: exit %d: %s", code, errOut)
	}
	if got := decodeList(t, out); !slices.Equal(got, want) {
		t.Fatalf("list --json: %d names, want the %d stored, soonest expiry first", len(got), len(want))
	}
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Error("list --json shows a key or a chain")
	}

	var paged []string
	after := []string{}
	for pages := 0; ; pages++ {
		out, errOut, code := runList(t, r.URL, append([]string{"--json", "--limit", "500"}, after...)...)
		if code != 0 {
			t.Fatalf("page %d: exit %d: %s", pages, code, errOut)
		}
		page := decodeList(t, out)
		paged = append(paged, page...)
		if errOut == "" {
			if len(page) != len(want)%500 {
				t.Errorf("the last page has %d names", len(page))
			}
			break
		}
		next := "--after " + page[len(page)-1]
		if len(page) != 500 || !strings.Contains(errOut, next) {
			t.Fatalf("page %d: %d names, stderr %q, want 500 and %q", pages, len(page), errOut, next)
		}
		after = strings.Fields(next)
	}
	if !slices.Equal(paged, want) {
		t.Errorf("the pages hold %d names, want the %d stored in order", len(paged), len(want))
	}

	table, errOut, code := runList(t, r.URL, "--limit", "100", "--after", want[699])
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	if code != 0 || len(lines) != 101 || !strings.HasPrefix(lines[0], "NAME") ||
		!strings.HasPrefix(lines[1], want[700]+" ") || !strings.HasPrefix(lines[100], want[799]+" ") ||
		!strings.Contains(errOut, "--after "+want[799]) {
		t.Errorf("list --limit 100 --after %s: exit %d, %d lines, stderr %q:\n%.500s", want[699], code, len(lines), errOut, table)
	}
	table, _, code = runList(t, r.URL)
	if lines := strings.Count(table, "\n"); code != 0 || lines != len(want)+1 {
		t.Errorf("list: exit %d, %d lines, want a header and %d", code, lines, len(want))
	}
	if out, _, code = runList(t, r.URL, "--json", "--after", want[len(want)-1]); code != 0 || out != "[]\n" {
		t.Errorf("after the last name: exit %d, %q", code, out)
	}
}

func TestListRefusesBadPaging(t *testing.T) {
	r := testenv.StartRedis(t)
	storeForList(t, r, 3)
	if _, errOut, code := runList(t, r.URL, "--limit", "-1"); code != exitUsage {
		t.Errorf("--limit -1: exit %d, %s", code, errOut)
	}
	if _, errOut, code := runList(t, r.URL, "--after", "gone.example.test"); code != exitFailed || !strings.Contains(errOut, "gone.example.test") {
		t.Errorf("--after a name not stored: exit %d, %s", code, errOut)
	}
}
