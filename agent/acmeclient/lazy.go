package acmeclient

import (
	"context"
	"fmt"
	"sync"

	"github.com/go-acme/lego/v4/challenge"
)

// Lazy is a Client made on first use. A fallback CA that is down when the
// agent starts must not keep the agent from starting, yet be tried when the
// CAs before it fail: Lazy connects (reads the directory, loads or
// registers the account) when it is first needed, and again on the next use
// after a failed attempt.
type Lazy struct {
	cfg      Config
	accounts AccountStore
	solver   challenge.Provider

	mu     sync.Mutex
	client *Client
}

// NewLazy returns a Lazy client for cfg.
func NewLazy(cfg Config, accounts AccountStore, solver challenge.Provider) *Lazy {
	if cfg.DirectoryURL == "" {
		cfg.DirectoryURL = LetsEncryptProduction
	}
	return &Lazy{cfg: cfg, accounts: accounts, solver: solver}
}

func (l *Lazy) get(ctx context.Context) (*Client, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.client != nil {
		return l.client, nil
	}
	c, err := New(ctx, l.cfg, l.accounts, l.solver)
	if err != nil {
		return nil, fmt.Errorf("connecting to the CA at %s: %w", l.cfg.DirectoryURL, err)
	}
	l.client = c
	return c, nil
}

// DirectoryURL returns the CA's directory URL (known without connecting).
func (l *Lazy) DirectoryURL() string { return l.cfg.DirectoryURL }

// Obtain is Client.Obtain.
func (l *Lazy) Obtain(ctx context.Context, names []string) (*Certificate, error) {
	return l.ObtainWith(ctx, names, OrderOptions{})
}

// ObtainWith is Client.ObtainWith.
func (l *Lazy) ObtainWith(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
	c, err := l.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("obtaining certificate for %s: %w", first(names), err)
	}
	return c.ObtainWith(ctx, names, opts)
}

// RenewalInfo is Client.RenewalInfo.
func (l *Lazy) RenewalInfo(ctx context.Context, chainPEM []byte) (*RenewalWindow, error) {
	c, err := l.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("asking for renewal information: %w", err)
	}
	return c.RenewalInfo(ctx, chainPEM)
}

// Revoke is Client.Revoke.
func (l *Lazy) Revoke(ctx context.Context, chainPEM []byte, reason uint) error {
	c, err := l.get(ctx)
	if err != nil {
		return fmt.Errorf("revoking: %w", err)
	}
	return c.Revoke(ctx, chainPEM, reason)
}

// RateLimited is Client.RateLimited (a CA never reached sent no Retry-After).
func (l *Lazy) RateLimited(err error) (*RateLimit, bool) {
	l.mu.Lock()
	c := l.client
	l.mu.Unlock()
	if c == nil {
		c = &Client{}
	}
	return c.RateLimited(err)
}

func first(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}
