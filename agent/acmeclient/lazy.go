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
//
// Lazy also survives the loss of the account: when the CA answers that the
// account does not exist (a CA reset, see AccountLost), it registers the
// account again, once for the whole fleet, and retries the request that
// hit the error (see recoverAccount).
type Lazy struct {
	cfg      Config
	accounts AccountStore
	solver   challenge.Provider

	// recovering admits one recovery of the account at a time.
	recovering chan struct{}

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
	return &Lazy{cfg: cfg, accounts: accounts, solver: solver, recovering: make(chan struct{}, 1)}
}

// Connect connects now (reads the directory, loads or registers the
// account), so that a wrong URL or a CA that is down shows at once.
func (l *Lazy) Connect(ctx context.Context) error {
	_, err := l.get(ctx)
	return err
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

// ObtainWith is Client.ObtainWith. An order that finds the account lost is
// ordered again once the account is registered again.
func (l *Lazy) ObtainWith(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
	var cert *Certificate
	err := l.withAccount(ctx, "obtaining certificate for "+first(names), func(c *Client) error {
		var err error
		cert, err = c.ObtainWith(ctx, names, opts)
		return err
	})
	return cert, err
}

// Account asks the CA for the account in use, registering it first when it
// is not registered, and again when the CA has lost it.
func (l *Lazy) Account(ctx context.Context) (*AccountStatus, error) {
	var status *AccountStatus
	err := l.withAccount(ctx, "asking for the ACME account", func(c *Client) error {
		var err error
		status, err = c.Account(ctx)
		return err
	})
	return status, err
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

// Revoke is Client.Revoke, retried once the account is registered again
// when the CA has lost it.
func (l *Lazy) Revoke(ctx context.Context, chainPEM []byte, reason uint) error {
	return l.withAccount(ctx, "revoking", func(c *Client) error { return c.Revoke(ctx, chainPEM, reason) })
}

// RevokeWithCertKey is the package's RevokeWithCertKey for the CA of l: no
// account is loaded or registered.
func (l *Lazy) RevokeWithCertKey(ctx context.Context, chainPEM, keyPEM []byte, reason uint) error {
	return RevokeWithCertKey(ctx, l.cfg, chainPEM, keyPEM, reason)
}

// withAccount runs call with the client, connecting first if needed. When
// the CA answers that the account is lost, the account is registered again
// and call runs once more with the new client. Errors of call are returned
// as they are; the others are prefixed with what.
func (l *Lazy) withAccount(ctx context.Context, what string, call func(*Client) error) error {
	c, err := l.get(ctx)
	if err != nil {
		// A CA that cannot be reached says so first.
		return outageError(fmt.Errorf("%s: %w", what, err), l.cfg.DirectoryURL)
	}
	err = call(c)
	if err == nil || !AccountLost(err) {
		return err
	}
	if rerr := l.recoverAccount(ctx, c, err); rerr != nil {
		lost := fmt.Errorf("%s: the CA %s lost the ACME account %s and registering it again failed: %w (the CA said: %w)",
			what, l.cfg.DirectoryURL, c.accountURI, rerr, err)
		if outage := AsOutage(rerr, l.cfg.DirectoryURL); outage != nil {
			// The CA failed the registration: the order waits for the CA
			// (and registers again once it answers), like any order the CA
			// failed, rather than failing the name.
			return &OutageError{Reason: outage.Reason, Err: lost}
		}
		return lost
	}
	if c, err = l.get(ctx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return call(c)
}

// recoverAccount replaces lost, whose request showed the account lost
// (cause), by a client of the account registered again. Once per incident
// for the fleet: under the fleet-wide account lock, the first agent asks the
// CA (registerAgain) and stores the result; the others, and later orders of
// this agent, find the stored account changed and only adopt it.
func (l *Lazy) recoverAccount(ctx context.Context, lost *Client, cause error) error {
	select {
	case l.recovering <- struct{}{}:
		defer func() { <-l.recovering }()
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	l.mu.Lock()
	current := l.client
	l.mu.Unlock()
	if current != lost {
		return nil // another order of this agent recovered the account already
	}
	dir, email := lost.cfg.DirectoryURL, lost.cfg.Email
	unlock, err := l.accounts.LockAccount(ctx, dir, email, AccountLockTTL)
	if err != nil {
		return err
	}
	defer unlock()
	_, _, generation, err := l.accounts.LoadAccount(ctx, dir, email)
	if err != nil {
		return err
	}
	change := AccountChange{Directory: dir, OldURI: lost.accountURI, Cause: cause}
	// A CA may give the account registered again its old URL: the stored
	// generation, not the URL, tells whether another agent did it already.
	if generation == lost.generation {
		// Done well within the lock: the others of the fleet wait for it,
		// and take it over when it runs out.
		regCtx, cancel := context.WithTimeout(ctx, AccountLockTTL*3/4)
		reg, err := lost.registerAgain(regCtx)
		cancel()
		if err != nil {
			return err
		}
		if err := l.accounts.ReplaceAccount(ctx, dir, email, reg.keyPEM, reg.uri); err != nil {
			return err
		}
		change.Registered, change.Found, change.NewKey = true, reg.found, reg.newKey
	}
	c, err := New(ctx, l.cfg, l.accounts, l.solver)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.client = c
	l.mu.Unlock()
	change.NewURI = c.accountURI
	if l.cfg.AccountChanged != nil {
		l.cfg.AccountChanged(change)
	}
	return nil
}

// RateLimited is RateLimitOf, as Client.RateLimited.
func (l *Lazy) RateLimited(err error) (*RateLimit, bool) { return RateLimitOf(err) }

func first(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}
