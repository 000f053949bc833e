package acmeclient

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
)

// OrderOptions are per-order choices.
type OrderOptions struct {
	// Replaces is the ARI certificate id (RFC 9773 section 4.1) of the
	// certificate this order renews; CAs exempt such orders from rate limits.
	// Empty for a first issuance.
	Replaces string
	// Profile overrides Config.Profile for this order when not empty.
	Profile string
	// Journal records the order while it runs and hands it back to the
	// next attempt for the same names at the same CA, which resumes it
	// (after a crash) instead of placing a new one. Default: none.
	Journal OrderJournal
}

// ErrNoARI is returned by RenewalInfo when the CA offers no renewal
// information; the caller falls back to its own renewal rule.
var ErrNoARI = api.ErrNoARI

// RenewalWindow is the CA's suggested renewal window for a certificate.
type RenewalWindow struct {
	Start, End time.Time
	// RetryAfter is when the CA wants to be asked again (0: it did not say).
	RetryAfter time.Duration
	// ExplanationURL points at the CA's reason for an early window, if any.
	ExplanationURL string
}

// CertID returns the ARI certificate id of the leaf of chainPEM.
func CertID(chainPEM []byte) (string, error) {
	leaf, err := leafOf(chainPEM)
	if err != nil {
		return "", err
	}
	return ariCertID(leaf)
}

// ariCertID is base64url(authority key id) "." base64url(serial's DER
// integer bytes). It is built here rather than with lego's certificate
// package, which would pull in its OCSP dependencies for twelve lines.
func ariCertID(leaf *x509.Certificate) (string, error) {
	if len(leaf.AuthorityKeyId) == 0 {
		return "", errors.New("the certificate has no authority key identifier")
	}
	der, err := asn1.Marshal(leaf.SerialNumber)
	if err != nil || len(der) < 3 {
		return "", fmt.Errorf("encoding the serial number: %v", err)
	}
	// Skip the tag and the one length byte (serials are at most 20 octets).
	return base64.RawURLEncoding.EncodeToString(leaf.AuthorityKeyId) + "." +
		base64.RawURLEncoding.EncodeToString(der[2:]), nil
}

// RenewalInfo asks the CA when the leaf of chainPEM should be renewed
// (RFC 9773). It returns an error wrapping ErrNoARI when the CA has no
// renewal information endpoint.
func (c *Client) RenewalInfo(ctx context.Context, chainPEM []byte) (*RenewalWindow, error) {
	id, err := CertID(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("asking for renewal information: %w", err)
	}
	url := c.core.GetDirectory().RenewalInfo
	if url == "" {
		return nil, fmt.Errorf("asking for renewal information: %w", ErrNoARI)
	}
	// The endpoint is a plain GET (no JWS), so it honours ctx directly.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/"+id, nil)
	if err != nil {
		return nil, fmt.Errorf("asking for renewal information: %w", err)
	}
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking for renewal information: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("asking for renewal information: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("asking for renewal information: the CA answered %s", resp.Status)
	}
	var info acme.RenewalInfoResponse
	if err := json.Unmarshal(body, &info); err != nil {
		return nil, fmt.Errorf("asking for renewal information: %w", err)
	}
	w := &RenewalWindow{Start: info.SuggestedWindow.Start.UTC(), End: info.SuggestedWindow.End.UTC(),
		ExplanationURL: info.ExplanationURL}
	if !w.Start.Before(w.End) {
		// RFC 9773 section 4.2: a window whose end is not after its start is invalid.
		return nil, fmt.Errorf("asking for renewal information: the CA sent an empty window %s..%s", w.Start, w.End)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if d, err := api.ParseRetryAfter(ra); err == nil {
			w.RetryAfter = d
		}
	}
	return w, nil
}

// Revocation reasons of RFC 5280 section 5.3.1 that a subscriber may give.
var RevocationReasons = map[string]uint{
	"unspecified":          acme.CRLReasonUnspecified,
	"keyCompromise":        acme.CRLReasonKeyCompromise,
	"superseded":           acme.CRLReasonSuperseded,
	"cessationOfOperation": acme.CRLReasonCessationOfOperation,
	"affiliationChanged":   acme.CRLReasonAffiliationChanged,
}

// Revoke asks the CA to revoke the leaf of chainPEM, signed with the
// account key (the account must be the one that ordered it).
func (c *Client) Revoke(ctx context.Context, chainPEM []byte, reason uint) error {
	leaf, err := leafOf(chainPEM)
	if err != nil {
		return fmt.Errorf("revoking: %w", err)
	}
	_, err = withContext(ctx, func() (struct{}, error) {
		return struct{}{}, c.core.Certificates.Revoke(acme.RevokeCertMessage{
			Certificate: base64.RawURLEncoding.EncodeToString(leaf.Raw),
			Reason:      &reason,
		})
	})
	if err != nil {
		return fmt.Errorf("revoking serial %s: %w", leaf.SerialNumber.Text(16), err)
	}
	return nil
}

// RevokeWithCertKey asks the CA of cfg to revoke the leaf of chainPEM with
// a request signed by the leaf's own private key, keyPEM (RFC 8555, section
// 7.6), instead of an account: any site that holds the certificate can
// revoke it, whichever site's account ordered it.
func RevokeWithCertKey(ctx context.Context, cfg Config, chainPEM, keyPEM []byte, reason uint) error {
	leaf, key, err := leafAndKey(chainPEM, keyPEM)
	if err != nil {
		return err
	}
	if cfg, err = cfg.withDefaults(); err != nil {
		return err
	}
	return revokeWithKey(ctx, cfg, leaf, key, reason)
}

// RevokeWithCertKey is the package's RevokeWithCertKey at c's CA.
func (c *Client) RevokeWithCertKey(ctx context.Context, chainPEM, keyPEM []byte, reason uint) error {
	leaf, key, err := leafAndKey(chainPEM, keyPEM)
	if err != nil {
		return err
	}
	return revokeWithKey(ctx, c.cfg, leaf, key, reason)
}

// leafAndKey parses the leaf of chainPEM and its key, to revoke it.
func leafAndKey(chainPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	leaf, err := leafOf(chainPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("revoking: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("revoking serial %s with its own key: %w", leaf.SerialNumber.Text(16), err)
	}
	return leaf, key, nil
}

// revokeWithKey revokes leaf with a request signed by key, at the CA of cfg
// (its defaults filled in).
func revokeWithKey(ctx context.Context, cfg Config, leaf *x509.Certificate, key crypto.Signer, reason uint) error {
	// Without an account URL, lego signs with the key itself in the JWK
	// header, which is what the CA checks against the certificate.
	core, err := newCore(ctx, cfg, "", key)
	if err != nil {
		return err
	}
	_, err = withContext(ctx, func() (struct{}, error) {
		return struct{}{}, core.Certificates.Revoke(acme.RevokeCertMessage{
			Certificate: base64.RawURLEncoding.EncodeToString(leaf.Raw),
			Reason:      &reason,
		})
	})
	if err != nil {
		return fmt.Errorf("revoking serial %s with its own key: %w", leaf.SerialNumber.Text(16), err)
	}
	return nil
}

// NotThisAccounts tells whether err is the CA refusing a revocation because
// the account that signed it did not order the certificate (and holds no
// authorization for its names): another site's account did.
func NotThisAccounts(err error) bool {
	var problem *acme.ProblemDetails
	return errors.As(err, &problem) && problem.Type == problemUnauthorized
}

func leafOf(chainPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(chainPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the chain does not start with a PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// Presets name well-known directories so that operators need not copy URLs.
var Presets = map[string]string{
	"letsencrypt":         LetsEncryptProduction,
	"letsencrypt-staging": LetsEncryptStaging,
}

// ResolveDirectory returns the URL of a preset name, or s unchanged.
func ResolveDirectory(s string) string {
	if url, ok := Presets[s]; ok {
		return url
	}
	return s
}

// CheckKeyType returns an error unless keyType is one New accepts.
func CheckKeyType(keyType string) error {
	switch keyType {
	case "", "ec256", "ec384", "rsa2048", "rsa4096":
		return nil
	}
	return fmt.Errorf("unknown key type %q (want ec256, ec384, rsa2048 or rsa4096)", keyType)
}
