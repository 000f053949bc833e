package main

import (
	"context"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/go-acme/lego/v4/challenge"
	legolog "github.com/go-acme/lego/v4/log"
	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/peer"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// newLogger writes structured logs to stderr and routes lego's and
// go-redis's own log lines into them, so one format reaches the operator's
// log pipeline.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String(flagLogLevel))); err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagLogLevel, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler
	switch format := c.String(flagLogFormat); format {
	case "text":
		handler = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		handler = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return nil, usageErrorf("certagent: --%s: %q is neither text nor json", flagLogFormat, format)
	}
	legolog.Logger = slog.NewLogLogger(handler.WithAttrs([]slog.Attr{slog.String("component", "lego")}), slog.LevelInfo)
	store.SetLogger(slog.New(handler.WithAttrs([]slog.Attr{slog.String("component", "redis")})))
	return slog.New(handler), nil
}

// openStore opens the store of the Redis flags.
func openStore(c *cli.Context) (*store.Store, error) {
	st, err := store.Open(c.Context, storeConfig(c))
	if err != nil {
		return nil, storeOpenError(err)
	}
	return st, nil
}

func closeStore(st *store.Store) { _ = st.Close() }

// acmeConfigs returns the client configuration of each CA, the primary
// (--acme-directory) first, then the fallbacks in order.
func acmeConfigs(c *cli.Context) ([]acmeclient.Config, error) {
	directories := append([]string{c.String(flagDirectory)}, c.StringSlice(flagFallbacks)...)
	if err := acmeclient.CheckKeyType(c.String(flagKeyType)); err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagKeyType, err)
	}
	var dnsProvider challenge.Provider
	var dnsRules acmeclient.DNSRules
	if name := c.String(flagDNS); name != "" {
		var err error
		if dnsProvider, err = acmeclient.NewDNSProvider(name); err != nil {
			return nil, usageErrorf("certagent: --%s: %v", flagDNS, err)
		}
	}
	for _, rule := range c.StringSlice(flagDNSNames) {
		rule = strings.TrimSpace(rule)
		if rule != "*" {
			name, err := storedName(rule)
			if err != nil {
				return nil, usageErrorf("certagent: --%s: %v", flagDNSNames, err)
			}
			rule = name
		}
		dnsRules = append(dnsRules, rule)
	}
	if len(dnsRules) > 0 && dnsProvider == nil {
		return nil, usageErrorf("certagent: --%s needs --%s", flagDNSNames, flagDNS)
	}
	// Mistakes in these would otherwise look like a CA that is down, which
	// run retries for ever.
	if _, err := acmeclient.LoadCARoots(c.StringSlice(flagCARoots)); err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagCARoots, err)
	}
	if (c.String(flagEABKID) == "") != (c.String(flagEABHMAC) == "") {
		return nil, usageErrorf("certagent: --%s and --%s go together", flagEABKID, flagEABHMAC)
	}
	var cfgs []acmeclient.Config
	for i, dir := range directories {
		dir = acmeclient.ResolveDirectory(strings.TrimSpace(dir))
		if !strings.HasPrefix(dir, "https://") && !strings.HasPrefix(dir, "http://") {
			return nil, usageErrorf("certagent: %q is neither an ACME directory URL nor a preset (%s)", dir, presetNames())
		}
		cfg := acmeclient.Config{
			DirectoryURL: dir,
			Email:        c.String(flagEmail),
			KeyType:      c.String(flagKeyType),
			CARootFiles:  c.StringSlice(flagCARoots),
			Profile:      c.String(flagProfile),
			DNSProvider:  dnsProvider,
			DNSNames:     dnsRules,
			DNSResolver:  c.String(flagDNS01Res),
		}
		if i == 0 {
			// The binding is issued by one CA for its own accounts.
			cfg.EABKeyID, cfg.EABHMAC = c.String(flagEABKID), c.String(flagEABHMAC)
		}
		cfgs = append(cfgs, cfg)
	}
	return cfgs, nil
}

// newTelemetry is buildTelemetry for a command that runs no daemon: the
// returned function delivers what is queued and stops.
func newTelemetry(c *cli.Context, st *store.Store, log *slog.Logger) (*telemetry.Hub, *telemetry.Metrics, func(), error) {
	events, metrics, sinks, err := buildTelemetry(c, st, log)
	if err != nil {
		return nil, nil, nil, err
	}
	running := newStages(context.Background())
	running.start(sinks...)
	return events, metrics, running.stop, nil
}

// buildTelemetry builds the hub every order reports through: the log, the
// events stream in Redis, Prometheus counters and, when --webhook-url is set,
// the webhook. The sinks deliver at once; their runs return once their
// context has ended and what is queued is delivered.
func buildTelemetry(c *cli.Context, st *store.Store, log *slog.Logger) (*telemetry.Hub, *telemetry.Metrics, []func(context.Context) error, error) {
	metrics := telemetry.NewMetrics()
	var webhook *telemetry.Webhook
	if url := c.String(flagWebhookURL); url != "" {
		var err error
		webhook, err = telemetry.NewWebhook(telemetry.WebhookConfig{
			URL: url, Secret: c.String(flagWebhookSecret), Logger: log,
		}, metrics)
		if err != nil {
			return nil, nil, nil, usageErrorf("certagent: --%s: %v (set --%s)", flagWebhookURL, err, flagWebhookSecret)
		}
	}
	stream := telemetry.NewStreamSink(st, metrics, log)
	sinks := []telemetry.Sink{metrics, stream}
	runs := []func(context.Context) error{stream.Run}
	if webhook != nil {
		sinks = append(sinks, webhook)
		runs = append(runs, webhook.Run)
	}
	return telemetry.NewHub(log, sinks...), metrics, runs, nil
}

func newManager(ctx context.Context, c *cli.Context, st *store.Store, log *slog.Logger, events *telemetry.Hub,
	metrics *telemetry.Metrics, fleet *peer.Fleet) (*manager.Manager, error) {
	cfgs, err := acmeConfigs(c)
	if err != nil {
		return nil, err
	}
	// With peer sites, tokens go to them too before the CA validates.
	var tokens acmeclient.TokenStore = st
	var peers manager.Peers
	if fleet != nil {
		tokens, peers = fleet.Tokens(st), fleetPeers{fleet}
	}
	for i := range cfgs {
		cfgs[i].ObserveRequest = metrics.ObserveACMERequest
		cfgs[i].AccountChanged = reportAccountChange(ctx, log, events)
	}
	// Each CA's client connects when first needed, and again after a failed
	// attempt: with fallbacks, a CA that is down must not keep the agent from
	// starting or the next CA from being tried. A client also registers its
	// account again when the CA has lost it.
	var issuers []manager.Issuer
	for _, cfg := range cfgs {
		issuers = append(issuers, acmeclient.NewLazy(cfg, st, acmeclient.NewHTTP01Provider(tokens, 0)))
	}
	if len(cfgs) == 1 {
		// One CA: connect now, so a wrong URL or a CA that is down shows at once.
		if err := issuers[0].(*acmeclient.Lazy).Connect(ctx); err != nil {
			return nil, err
		}
	}
	concurrency, err := newConcurrency(c, log)
	if err != nil {
		return nil, err
	}
	return manager.New(manager.Config{
		Concurrency:  concurrency,
		Store:        st,
		Issuer:       issuers[0],
		Fallbacks:    issuers[1:],
		Logger:       log,
		Events:       events,
		OrderTimeout: c.Duration(flagTimeout),
		// Only run has --lock-ttl; elsewhere zero means the default.
		LockTTL: c.Duration(flagLockTTL),
		Peers:   peers,
	}), nil
}

func presetNames() string {
	names := make([]string, 0, len(acmeclient.Presets))
	for name := range acmeclient.Presets {
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// session is what a command that orders certificates works with: Redis, the
// event hub and the manager, stopping on SIGINT/SIGTERM.
type session struct {
	ctx    context.Context
	log    *slog.Logger
	store  *store.Store
	events *telemetry.Hub
	mgr    *manager.Manager
	closes []func()
}

// openSession connects to Redis and the CA. Close releases what it opened,
// last first, delivering the queued events before Redis is closed.
func openSession(c *cli.Context) (*session, error) {
	s := &session{}
	var err error
	if s.store, s.log, err = openStoreAndLogger(c); err != nil {
		return nil, err
	}
	s.closes = append(s.closes, func() { closeStore(s.store) })
	ctx, stop := withSignals(c.Context)
	s.ctx = ctx
	s.closes = append(s.closes, stop)
	events, metrics, stopEvents, err := newTelemetry(c, s.store, s.log)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.events = events
	s.closes = append(s.closes, stopEvents)
	fleet, _, err := newFleet(c, s.store, s.log)
	if err != nil {
		s.Close()
		return nil, err
	}
	if s.mgr, err = newManager(ctx, c, s.store, s.log, events, metrics, fleet); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the session.
func (s *session) Close() {
	for i := len(s.closes) - 1; i >= 0; i-- {
		s.closes[i]()
	}
}

// openStoreAndLogger is how every command that works on the stored state
// begins: the logger of --log-level and --log-format, then the store.
// closeStore releases the store.
func openStoreAndLogger(c *cli.Context) (*store.Store, *slog.Logger, error) {
	log, err := newLogger(c)
	if err != nil {
		return nil, nil, err
	}
	st, err := openStore(c)
	if err != nil {
		return nil, nil, err
	}
	return st, log, nil
}
