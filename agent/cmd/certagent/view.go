package main

import (
	"encoding/json"
	"errors"
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
	Names       []string     `json:"names,omitempty"`
	NotBefore   time.Time    `json:"not_before,omitzero"`
	NotAfter    time.Time    `json:"not_after,omitzero"`
	Issuer      string       `json:"issuer"`
	Serial      string       `json:"serial"`
	Fingerprint string       `json:"fingerprint_sha256"`
	KeyType     string       `json:"key_type,omitempty"`
	CA          string       `json:"ca,omitempty"`
	IssuedAt    time.Time    `json:"issued_at,omitzero"`
	Status      string       `json:"status,omitempty"`
	Renewal     *renewalView `json:"renewal,omitempty"`
	// Reason says why a corrupt record cannot be served.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
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

// storedView is the view of what GetCert or a walk returned for name: a
// certificate with its status, or for a corrupt record what of it could be
// read, status corrupt and the reason. ok is false when nothing is stored.
func storedView(name string, rec *store.CertRecord, err error, failing bool, now time.Time) (v certView, ok bool) {
	var corrupt *store.CorruptError
	switch {
	case err == nil:
		v = viewOf(name, rec)
		v.Status = statusOf(v, failing, now)
	case errors.As(err, &corrupt):
		v = certView{Name: name}
		if corrupt.Record != nil {
			v = viewOf(name, corrupt.Record)
		}
		v.Status, v.Reason = statusCorrupt, corrupt.Reason
	default:
		return certView{Name: name}, false
	}
	return v, true
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

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
	if v.Reason != "" {
		fmt.Fprintf(tw, "problem:\t%s\n", v.Reason)
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
