package acmeclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-acme/lego/v4/acme"
)

// OrderJournal keeps the order running for a name where every agent of the
// fleet sees it, so that an agent taking the name over after the one that
// placed the order died resumes that order instead of placing a second one
// (each counts against the CA's new-orders limit). The manager keeps it with
// the name's lease.
type OrderJournal interface {
	// Pending returns the order recorded for the name, or nil when none
	// is (or the record is unusable).
	Pending(ctx context.Context) (*PendingOrder, error)
	// Record stores o as the name's running order, replacing any other. An
	// error stops the order.
	Record(ctx context.Context, o PendingOrder) error
	// Forget removes the recorded order: it is dead at the CA.
	Forget(ctx context.Context) error
}

// PendingOrder is an order placed at a CA and not finished yet.
type PendingOrder struct {
	CA    string   // directory URL
	URL   string   // the order's URL at the CA
	Names []string // as ordered, primary first
	// KeyType and KeyPEM (PKCS #8) are the certificate's new key, set just
	// before the order is finalized with a CSR for it.
	KeyType, KeyPEM string
	// Expires is when the CA lets the order expire (zero when unknown).
	Expires time.Time
}

// noJournal records nothing: an order without a journal is never resumed.
type noJournal struct{}

func (noJournal) Pending(context.Context) (*PendingOrder, error) { return nil, nil }
func (noJournal) Record(context.Context, PendingOrder) error     { return nil }
func (noJournal) Forget(context.Context) error                   { return nil }

// pendingOrder describes order for the journal, with the certificate's key
// once there is one.
func (c *Client) pendingOrder(order acme.ExtendedOrder, names []string, keyType string, key crypto.Signer) PendingOrder {
	o := PendingOrder{CA: c.cfg.DirectoryURL, URL: order.Location, Names: names, KeyType: keyType}
	if t, err := time.Parse(time.RFC3339, order.Expires); err == nil {
		o.Expires = t
	}
	if key != nil {
		// Only keys generateKey made are recorded: they always encode.
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		o.KeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	return o
}

// resume returns the order journal recorded for names at this CA, as the CA
// sees it now, with the certificate key recorded for it (nil before
// finalization). It returns a zero order, forgetting the record, when there
// is nothing to resume: no record, another CA or other names, an order that
// is invalid or expired, one the CA no longer knows (an account reset), or
// one that is being issued without its key. An order the CA cannot be asked
// about because it does not answer is an error: a new order would fail too.
func (c *Client) resume(ctx context.Context, names []string, journal OrderJournal) (*acme.ExtendedOrder, crypto.Signer, error) {
	rec, err := journal.Pending(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the running order: %w", err)
	}
	if rec == nil || rec.CA != c.cfg.DirectoryURL || !sameNames(rec.Names, names) {
		return nil, nil, nil
	}
	if !rec.Expires.IsZero() && !time.Now().Before(rec.Expires) {
		return nil, nil, journal.Forget(ctx)
	}
	order, err := withContext(ctx, func() (acme.ExtendedOrder, error) { return c.core.Orders.Get(rec.URL) })
	if err != nil {
		var problem *acme.ProblemDetails
		if errors.As(err, &problem) && problem.HTTPStatus >= 400 && problem.HTTPStatus < 500 && problem.HTTPStatus != 429 {
			return nil, nil, journal.Forget(ctx)
		}
		return nil, nil, fmt.Errorf("reading the running order %s: %w", rec.URL, err)
	}
	order.Location = rec.URL
	var key crypto.Signer
	if rec.KeyPEM != "" {
		if key, err = parseKey([]byte(rec.KeyPEM)); err != nil {
			key = nil
		}
	}
	switch order.Status {
	case acme.StatusPending, acme.StatusReady:
		return &order, key, nil
	case acme.StatusProcessing, acme.StatusValid:
		if key != nil {
			return &order, key, nil
		}
	}
	return nil, nil, journal.Forget(ctx)
}

// sameNames tells whether a and b hold the same names, in any order.
func sameNames(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// keyTypeOf names key as Config.KeyType does.
func keyTypeOf(key crypto.Signer) string {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P384() {
			return "ec384"
		}
		return "ec256"
	case *rsa.PrivateKey:
		return fmt.Sprintf("rsa%d", k.N.BitLen())
	}
	return ""
}
