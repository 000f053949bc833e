package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// certView is what the CLI shows of a record: everything but the private key.
type certView struct {
	Name        string       `json:"name"`
	Names       []string     `json:"names"`
	NotBefore   time.Time    `json:"not_before"`
	NotAfter    time.Time    `json:"not_after"`
	Issuer      string       `json:"issuer"`
	Serial      string       `json:"serial"`
	Fingerprint string       `json:"fingerprint_sha256"`
	KeyType     string       `json:"key_type,omitempty"`
	CA          string       `json:"ca,omitempty"`
	IssuedAt    time.Time    `json:"issued_at"`
	Status      string       `json:"status,omitempty"`
	Renewal     *renewalView `json:"renewal,omitempty"`
	Error       string       `json:"error,omitempty"`
}

// renewalView is the renewal state show prints.
type renewalView struct {
	RenewAt     *time.Time `json:"renew_at,omitempty"`
	WindowStart *time.Time `json:"ari_window_start,omitempty"`
	WindowEnd   *time.Time `json:"ari_window_end,omitempty"`
	Failures    int        `json:"failures"`
	LastError   string     `json:"last_error,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func viewOf(name string, rec *store.CertRecord) certView {
	return certView{
		Name:        name,
		Names:       rec.Names,
		NotBefore:   rec.NotBefore.UTC(),
		NotAfter:    rec.NotAfter.UTC(),
		Issuer:      rec.Issuer,
		Serial:      rec.Serial,
		Fingerprint: rec.Fingerprint,
		KeyType:     rec.KeyType,
		CA:          rec.CA,
		IssuedAt:    rec.IssuedAt.UTC(),
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeTable prints one aligned line per certificate.
func writeTable(w io.Writer, views []certView, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tNOT AFTER\tLEFT\tSTATUS\tISSUER\tFINGERPRINT")
	for _, v := range views {
		if v.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\tcorrupt\t-\t%s\n", v.Name, v.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.NotAfter.Format(time.RFC3339),
			left(v.NotAfter.Sub(now)), v.Status, v.Issuer, shortFingerprint(v.Fingerprint))
	}
	return tw.Flush()
}

func writeDetails(w io.Writer, v certView, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", v.Name)
	fmt.Fprintf(tw, "names:\t%s\n", strings.Join(v.Names, ", "))
	fmt.Fprintf(tw, "not before:\t%s\n", v.NotBefore.Format(time.RFC3339))
	fmt.Fprintf(tw, "not after:\t%s (%s left)\n", v.NotAfter.Format(time.RFC3339), left(v.NotAfter.Sub(now)))
	fmt.Fprintf(tw, "issuer:\t%s\n", v.Issuer)
	fmt.Fprintf(tw, "serial:\t%s\n", v.Serial)
	fmt.Fprintf(tw, "fingerprint:\tSHA-256 %s\n", v.Fingerprint)
	fmt.Fprintf(tw, "key type:\t%s\n", v.KeyType)
	fmt.Fprintf(tw, "ca:\t%s\n", v.CA)
	fmt.Fprintf(tw, "issued at:\t%s\n", v.IssuedAt.Format(time.RFC3339))
	if v.Status != "" {
		fmt.Fprintf(tw, "status:\t%s\n", v.Status)
	}
	if r := v.Renewal; r != nil {
		if r.RenewAt != nil {
			fmt.Fprintf(tw, "renewal:\t%s\n", r.RenewAt.Format(time.RFC3339))
		} else {
			fmt.Fprintf(tw, "renewal:\tnot yet scheduled\n")
		}
		if r.WindowStart != nil && r.WindowEnd != nil {
			fmt.Fprintf(tw, "CA window (ARI):\t%s .. %s\n", r.WindowStart.Format(time.RFC3339), r.WindowEnd.Format(time.RFC3339))
		}
		if r.Failures > 0 {
			fmt.Fprintf(tw, "failed renewals:\t%d, last: %s\n", r.Failures, oneLine(r.LastError))
		}
	}
	return tw.Flush()
}

func left(d time.Duration) string {
	if d <= 0 {
		return "expired"
	}
	if d >= 48*time.Hour {
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	return d.Round(time.Minute).String()
}

func shortFingerprint(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}
