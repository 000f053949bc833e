package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// SetRenewalInfo makes Pebble answer ARI requests for the certificate in
// certPEM (its leaf) with the suggested window [start, end], through the
// management API's /set-renewal-info/.
func (p *Pebble) SetRenewalInfo(t testing.TB, certPEM []byte, start, end time.Time) {
	t.Helper()
	window, err := json.Marshal(map[string]any{"suggestedWindow": map[string]string{
		"start": start.UTC().Format(time.RFC3339Nano), "end": end.UTC().Format(time.RFC3339Nano)}})
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(map[string]string{"Certificate": string(certPEM), "ARIResponse": string(window)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.ManagementURL+"/set-renewal-info/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		t.Fatalf("setting pebble's renewal info: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("setting pebble's renewal info: %s: %s", resp.Status, msg)
	}
}

// CertStatus returns what Pebble knows of the certificate with the given
// serial (lowercase hex): "Valid" or "Revoked", and the revocation reason
// code when Pebble recorded one (-1 otherwise).
func (p *Pebble) CertStatus(t testing.TB, serialHex string) (status string, reason int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out struct {
		Status string
		Reason *int
	}
	if err := p.get(ctx, fmt.Sprintf("%s/cert-status-by-serial/%s", p.ManagementURL, serialHex), &out); err != nil {
		t.Fatalf("asking pebble for the status of serial %s: %v", serialHex, err)
	}
	if out.Reason == nil {
		return out.Status, -1
	}
	return out.Status, *out.Reason
}
