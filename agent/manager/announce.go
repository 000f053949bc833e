package manager

import (
	"context"
	"log/slog"
	"time"

	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
)

// AnnouncerConfig configures an Announcer.
type AnnouncerConfig struct {
	Store *store.Store
	// Static are the agent's rules from flags, environment and file.
	// Default: none.
	Static *policy.Policy
	// Ask says whether an ask URL decides for the names no rule allows.
	Ask bool
	// Name is this agent's name in the heartbeat. Required.
	Name string
	// Interval is the pause between two heartbeats; each counts for three.
	// Default: 1 s.
	Interval time.Duration
	// Forget is how long an agent's rules stay in the published union
	// after its last beat: clearly longer than a restart, so that a
	// restarting agent's names are not refused meanwhile. Default: 30 s,
	// and at least ten intervals.
	Forget time.Duration
	// Logger. Default: slog.Default().
	Logger *slog.Logger
}

// Announcer tells nginx what it needs to judge names without an agent: it
// publishes the agent's allow rules once (nginx judges by the union of the
// live agents' rules, with the allowlist), then keeps the heartbeat that
// says an agent takes names and that keeps its rules in the union. nginx holds no
// handshake while no heartbeat counts, and refuses at once the names no
// published rule can allow.
type Announcer struct {
	cfg AnnouncerConfig
}

// NewAnnouncer returns an Announcer for cfg.
func NewAnnouncer(cfg AnnouncerConfig) *Announcer {
	if cfg.Static == nil {
		cfg.Static, _ = policy.ParsePolicy(nil) // no rules: cannot fail
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Forget <= 0 {
		cfg.Forget = max(30*time.Second, 10*cfg.Interval)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Announcer{cfg: cfg}
}

// Run publishes the rules and beats every Interval until ctx ends. A
// failure (Redis away) is logged once until Redis answers again; the
// publication is tried again at every beat until it succeeds. The last beat
// expires on its own after three intervals. It returns only nil.
func (a *Announcer) Run(ctx context.Context) error {
	published, failing := false, false
	for ctx.Err() == nil {
		err := a.beat(ctx, &published)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			failing = true
			a.cfg.Logger.Error("announcing this agent to nginx failed; nginx holds no handshake meanwhile", "error", err)
		case err == nil && failing:
			failing = false
			a.cfg.Logger.Info("announcing this agent to nginx again")
		}
		select {
		case <-ctx.Done():
		case <-time.After(a.cfg.Interval):
		}
	}
	return nil
}

// beat beats, then publishes the rules if they are not yet, or no more
// (Redis restarted without persistence, or this agent was away for longer
// than Forget): nginx reads the heartbeat with the rules it is told about,
// and must find this agent's among them.
func (a *Announcer) beat(ctx context.Context, published *bool) error {
	there, err := a.cfg.Store.Beat(ctx, a.cfg.Name, 3*a.cfg.Interval, a.cfg.Forget)
	if err != nil {
		return err
	}
	if !*published || !there {
		if err := a.Publish(ctx); err != nil {
			return err
		}
		*published = true
	}
	return nil
}

// Publish publishes the agent's rules as a new version: they join the
// other live agents' in the union nginx judges by.
func (a *Announcer) Publish(ctx context.Context) error {
	rules := a.cfg.Static.Rules()
	var ask []string
	if a.cfg.Ask {
		ask = []string{"*"}
	}
	version, err := a.cfg.Store.PublishRules(ctx, store.PublishedRules{Agent: a.cfg.Name, Static: rules, Ask: ask})
	if err != nil {
		return err
	}
	a.cfg.Logger.Info("allow rules published for nginx", "version", version, "rules", len(rules), "ask", a.cfg.Ask)
	return nil
}
