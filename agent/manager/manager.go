// Package manager decides which certificates to order and orders them: one
// order per name at a time across the fleet, the result written where nginx
// reads it.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

// Issuer obtains certificates from a CA. *acmeclient.Client implements it.
type Issuer interface {
	// Obtain orders one certificate for names, the first being the subject.
	Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error)
	// DirectoryURL names the CA.
	DirectoryURL() string
}

// Clock tells the time; tests replace it.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config configures a Manager.
type Config struct {
	Store  *store.Store
	Issuer Issuer
	// Logger receives events. Default: slog.Default().
	Logger *slog.Logger
	// Clock. Default: the system clock.
	Clock Clock
	// OrderTimeout bounds one order. Default: 2 minutes.
	OrderTimeout time.Duration
	// LockTTL is the lease on a name while its order runs. Default: store.LockTTL.
	LockTTL time.Duration
}

// Manager orders certificates and stores them.
type Manager struct {
	cfg Config
}

// New returns a Manager for cfg.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.OrderTimeout <= 0 {
		cfg.OrderTimeout = 2 * time.Minute
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = store.LockTTL
	}
	return &Manager{cfg: cfg}
}

// Issue orders one certificate for names (normalized; the first is the
// primary name), under the lease of the primary name, and stores it. It
// returns an error wrapping store.ErrLockHeld when another agent is ordering it.
func (m *Manager) Issue(ctx context.Context, names []string) (*store.CertRecord, error) {
	if len(names) == 0 {
		return nil, errors.New("issuing: no names")
	}
	primary := names[0]
	lock, err := m.cfg.Store.AcquireLock(ctx, primary, m.cfg.LockTTL)
	if err != nil {
		return nil, err
	}
	orderCtx, cancel := context.WithTimeoutCause(ctx, m.cfg.OrderTimeout,
		fmt.Errorf("the order took longer than %s", m.cfg.OrderTimeout))
	defer cancel()
	keepCtx, stopKeeping := context.WithCancelCause(orderCtx)
	defer stopKeeping(nil)
	go lock.KeepAlive(keepCtx, func(err error) { stopKeeping(err) })
	defer func() {
		// The release must happen even when ctx is already over.
		releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lock.Release(releaseCtx); err != nil {
			m.cfg.Logger.Warn("releasing lock", "name", primary, "error", err)
		}
	}()

	started := m.cfg.Clock.Now()
	cert, err := m.cfg.Issuer.Obtain(keepCtx, names)
	if err != nil {
		return nil, err
	}
	if cause := context.Cause(keepCtx); cause != nil {
		return nil, fmt.Errorf("obtaining certificate for %s: %w", primary, cause)
	}
	rec, err := store.NewCertRecord(cert.FullChain, cert.KeyPEM, primary)
	if err != nil {
		return nil, fmt.Errorf("obtaining certificate for %s: the CA returned an unusable certificate: %w", primary, err)
	}
	rec.KeyType = cert.KeyType
	rec.CA = m.cfg.Issuer.DirectoryURL()
	rec.CertURL = cert.CertURL
	rec.IssuedAt = m.cfg.Clock.Now()
	if err := m.cfg.Store.PutCert(ctx, rec); err != nil {
		return nil, err
	}
	m.cfg.Logger.Info("certificate issued", "name", primary, "names", strings.Join(rec.Names, ","),
		"not_after", rec.NotAfter.Format(time.RFC3339), "fingerprint", rec.Fingerprint,
		"took", m.cfg.Clock.Now().Sub(started).Round(time.Millisecond))
	return rec, nil
}

// NeedsCertificate reports whether name has no usable certificate: none
// stored for it or for its wildcard, or the stored one is in the last third
// of its lifetime.
func (m *Manager) NeedsCertificate(ctx context.Context, name string) (bool, error) {
	candidates := []string{name}
	if i := strings.IndexByte(name, '.'); i > 0 && strings.Count(name[i+1:], ".") >= 1 {
		candidates = append(candidates, "*"+name[i:])
	}
	now := m.cfg.Clock.Now()
	for _, candidate := range candidates {
		rec, err := m.cfg.Store.GetCert(ctx, candidate)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if errors.Is(err, store.ErrCorrupt) {
			m.cfg.Logger.Warn("stored certificate is corrupt and will be replaced", "name", candidate, "error", err)
			continue
		}
		if err != nil {
			return false, err
		}
		lifetime := rec.NotAfter.Sub(rec.NotBefore)
		if now.Before(rec.NotAfter.Add(-lifetime / 3)) {
			return false, nil
		}
	}
	return true, nil
}
