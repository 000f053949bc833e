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
	// connecting is set while one caller connects; the others wait for it
	// (or for their own context) and share its result.
	connecting *attempt
}

// attempt is one connection attempt; done is closed when err is set.
type attempt struct {
	done chan struct{}
	err  error
}

// NewLazy returns a Lazy client for cfg.
func NewLazy(cfg Config, accounts AccountStore, solver challenge.Provider) *Lazy {
	if cfg.DirectoryURL == "" {
		cfg.DirectoryURL = LetsEncryptProduction
	}
	return &Lazy{cfg: cfg, accounts: accounts, solver: solver}
}

// get returns the client, connecting first if needed. One caller connects at
// a time; callers arriving meanwhile wait for that attempt within their own
// context and share its result, so a CA that does not answer costs each order
// one attempt's time, not one per order queued before it.
func (l *Lazy) get(ctx context.Context) (*Client, error) {
	l.mu.Lock()
	if l.client != nil {
		c := l.client
		l.mu.Unlock()
		return c, nil
	}
	if a := l.connecting; a != nil {
		l.mu.Unlock()
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to the CA at %s: %w", l.cfg.DirectoryURL, context.Cause(ctx))
		}
		if a.err != nil {
			return nil, a.err
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.client, nil
	}
	a := &attempt{done: make(chan struct{})}
	l.connecting = a
	l.mu.Unlock()

	c, err := New(ctx, l.cfg, l.accounts, l.solver)
	if err != nil {
		err = fmt.Errorf("connecting to the CA at %s: %w", l.cfg.DirectoryURL, err)
	}
	l.mu.Lock()
	l.connecting = nil
	if err == nil {
		l.client = c
	}
	a.err = err
	l.mu.Unlock()
	close(a.done)
	return c, err
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
		return nil, outageError(fmt.Errorf("obtaining certificate for %s: %w", first(names), err), l.cfg.DirectoryURL)
	}
	return c.ObtainWith(ctx, names, opts)
}

// Probe is Client.Probe; it connects first (reading the directory and
// loading the account) when no attempt has succeeded yet.
func (l *Lazy) Probe(ctx context.Context) error {
	c, err := l.get(ctx)
	if err != nil {
		return outageError(err, l.cfg.DirectoryURL)
	}
	return c.Probe(ctx)
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
