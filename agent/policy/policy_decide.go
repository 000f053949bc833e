package policy

import (
	"context"
	"errors"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// DeciderConfig configures a Decider.
type DeciderConfig struct {
	Store *store.Store
	// Static are the rules from flags, environment and file. Default: none.
	Static *Policy
	// Ask is the operator's ask URL. Default: none.
	Ask *Ask
	// AskTTL is how long an allowing ask answer is cached in Redis. Default: 1 h.
	AskTTL time.Duration
	// DenyTTL is how long a refusal is cached in Redis (the shared negative
	// cache), unless the allowlist changes first. Default: 1 h.
	DenyTTL time.Duration
}

// Verdict is the answer about one name.
type Verdict struct {
	Allowed bool
	Source  string // static, allowlist, ask, ask-cache; or denied, negative-cache
	Reason  string // why it was refused
	// Unavailable: a source that might allow the name (the ask URL) could not
	// answer; the name is refused for now, not cached, and tried again later.
	Unavailable bool
}

// Decider decides whether a name may get a certificate: deny by default,
// allowed when any source allows it. Refusals are cached fleet-wide so a
// name seen again and again is not evaluated again.
type Decider struct {
	cfg DeciderConfig
}

// NewDecider returns a Decider for cfg.
func NewDecider(cfg DeciderConfig) *Decider {
	if cfg.Static == nil {
		cfg.Static = &Policy{exact: map[string]bool{}}
	}
	if cfg.AskTTL <= 0 {
		cfg.AskTTL = time.Hour
	}
	if cfg.DenyTTL <= 0 {
		cfg.DenyTTL = time.Hour
	}
	return &Decider{cfg: cfg}
}

// Decide answers for the normalized name. Errors are Redis errors; an
// unavailable ask URL is a Verdict, not an error.
func (d *Decider) Decide(ctx context.Context, name string) (Verdict, error) {
	b := d.cfg.Store.NewBatch()
	decide := d.Queue(ctx, b, name)
	b.Exec(ctx)
	return decide()
}

// Queue queues in b the reads Decide decides on (the cached denial, the
// allowlist, the cached ask answer: all at once) and returns Decide, to
// call once b ran. A name the static rules allow needs no read.
func (d *Decider) Queue(ctx context.Context, b *store.Batch, name string) func() (Verdict, error) {
	// Static rules cost nothing and change only with a restart: they come
	// before the cache, so a new --allow takes effect at once.
	if d.cfg.Static.Allows(name) {
		return func() (Verdict, error) { return Verdict{Allowed: true, Source: "static"}, nil }
	}
	read := cachedVerdicts{denied: b.Denied(ctx, name), allowlist: b.AllowlistAllows(ctx, name)}
	if d.cfg.Ask != nil {
		read.askAllowed = b.AskAllowed(ctx, name)
	}
	return func() (Verdict, error) { return d.decide(ctx, name, read) }
}

// cachedVerdicts are the reads of Decide, each to call once its batch ran.
type cachedVerdicts struct {
	denied     func() (*store.Denial, error)
	allowlist  func() (bool, error)
	askAllowed func() (bool, error) // nil without an ask URL
}

// decide is Decide for a name the static rules do not allow, from what
// read holds: the cached denial, the allowlist, then the ask URL (its
// cached answer first).
func (d *Decider) decide(ctx context.Context, name string, read cachedVerdicts) (Verdict, error) {
	st := d.cfg.Store
	denial, err := read.denied()
	if err != nil {
		return Verdict{}, err
	}
	if denial != nil {
		return Verdict{Source: "negative-cache", Reason: denial.Reason}, nil
	}
	ok, err := read.allowlist()
	if err != nil {
		return Verdict{}, err
	}
	if ok {
		return Verdict{Allowed: true, Source: "allowlist"}, nil
	}
	reason := "no allow rule names it"
	if d.cfg.Ask != nil {
		cached, err := read.askAllowed()
		if err != nil {
			return Verdict{}, err
		}
		if cached {
			return Verdict{Allowed: true, Source: "ask-cache"}, nil
		}
		allowed, err := d.cfg.Ask.Allows(ctx, name)
		switch {
		case errors.Is(err, ErrAskUnavailable):
			return Verdict{Source: "ask", Reason: err.Error(), Unavailable: true}, nil
		case err != nil:
			return Verdict{}, err
		case allowed:
			if err := st.CacheAskAllowed(ctx, name, d.cfg.AskTTL); err != nil {
				return Verdict{}, err
			}
			return Verdict{Allowed: true, Source: "ask"}, nil
		}
		reason = "no allow rule names it and the ask URL said no"
	}
	if err := st.Deny(ctx, name, reason, d.cfg.DenyTTL); err != nil {
		return Verdict{}, err
	}
	return Verdict{Source: "denied", Reason: reason}, nil
}
