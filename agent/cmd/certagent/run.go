package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/internal/backoff"
	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/peer"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "tail the stream of requested names, obtain certificates for the allowed ones, renew what is stored",
		Description: "Runs until SIGTERM. Reads the names nginx records, orders certificates for those the allow rules " +
			"permit, and renews every stored certificate before it expires (inside the CA's ARI window when it offers " +
			"one, else when a third of its lifetime remains).\n\nExamples:\n" +
			"  certagent run --allow '*.example.com' --email ops@example.com\n" +
			"  CERTAGENT_ALLOW='*' CERTAGENT_ACME_DIRECTORY=letsencrypt-staging certagent run\n" +
			"  certagent run --allow shop.example --profile shortlived --fallback-directory https://acme.other-ca.example/dir",
		Flags: withFlags(redisFlags(), acmeFlags(), peerFlags(), peerServerFlags(), []cli.Flag{
			&cli.StringFlag{Name: flagHTTPListen, EnvVars: envVars(flagHTTPListen),
				Usage: "address for /metrics (Prometheus), /healthz and /readyz, e.g. 127.0.0.1:9464 (default: none)"},
			&cli.StringFlag{Name: flagWebhookURL, EnvVars: envVars(flagWebhookURL),
				Usage: "URL that receives every event as a signed JSON POST (default: none)"},
			&cli.StringFlag{Name: flagWebhookSecret, EnvVars: envVars(flagWebhookSecret),
				FilePath: secretFile(flagWebhookSecret), Action: trimSecret(flagWebhookSecret),
				Usage: "HMAC-SHA256 key of the webhook's X-Certagent-Signature header; required with --" + flagWebhookURL},
			&cli.StringSliceFlag{Name: flagAllow, EnvVars: envVars(flagAllow),
				Usage: "names that may get a certificate: exact names, *.example.com for every name below it, * for all; comma-separated. Nothing else is issued"},
			&cli.StringFlag{Name: flagGroup, EnvVars: envVars(flagGroup), Value: "certagent",
				Usage: "consumer group shared by the agents"},
			&cli.StringFlag{Name: flagConsumer, EnvVars: envVars(flagConsumer),
				Usage: "this agent's stable name in the group (default: the host name)"},
			&cli.DurationFlag{Name: flagGrace, EnvVars: envVars(flagGrace), Value: 20 * time.Second,
				Usage: "on SIGTERM, how long running orders may finish before they are left for the next start"},
			&cli.DurationFlag{Name: flagReclaim, EnvVars: envVars(flagReclaim), Value: time.Minute,
				Usage: "stream entries unacknowledged this long (their agent died, or another held the name's lease) are taken over"},
			&cli.DurationFlag{Name: flagLockTTL, EnvVars: envVars(flagLockTTL), Value: store.LockTTL, Action: atLeastDuration(flagLockTTL, 3*time.Second, "it is extended every third of it"),
				Usage: "lease on a name while its order runs, extended every third of it; a killed agent blocks its names this long"},
			&cli.DurationFlag{Name: flagRenewInterval, EnvVars: envVars(flagRenewInterval), Value: time.Minute,
				Usage: "longest pause between two looks at the renewal schedule (it wakes earlier when a renewal is due sooner)"},
			&cli.DurationFlag{Name: flagRenewRetry, EnvVars: envVars(flagRenewRetry), Value: time.Minute,
				Usage: "pause after a failed renewal; doubles per failure up to 6h, shorter as expiry nears"},
			&cli.IntFlag{Name: flagRenewConc, EnvVars: envVars(flagRenewConc), Value: manager.DefaultRenewWorkers, Action: atLeastInt(flagRenewConc, 1),
				Usage: "renewals run at once by this agent; the default keeps a few agents behind one address well within Let's Encrypt's request limits"},
			&cli.DurationFlag{Name: flagCheckInterval, EnvVars: envVars(flagCheckInterval), Value: 10 * time.Minute,
				Usage: "pause between two checks of every stored certificate; a corrupt one is ordered again"},
		}, concurrencyFlags(), gateFlags()),
		Action: runAction,
	}
}

func runAction(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	static, ask, err := allowPolicy(c, log)
	if err != nil {
		return err
	}
	preflight, err := newPreflight(c)
	if err != nil {
		return err
	}
	consumerName, err := consumerNameOf(c)
	if err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer closeStore(st)

	signals, stop := withSignals(c.Context)
	defer stop()
	daemon := newStages(signals)
	defer daemon.stop()
	ctx := daemon.ctx

	events, metrics, sinks, err := buildTelemetry(c, st, log)
	if err != nil {
		return err
	}
	daemon.start(sinks...)
	var ready atomic.Bool
	if err := startHTTP(daemon, c, st, metrics, log, &ready); err != nil {
		return err
	}

	fleet, peerCfg, err := newFleet(c, st, log)
	if err != nil {
		return err
	}
	if fleet != nil {
		runPeers, err := startPeers(ctx, c, fleet, peerCfg, st, log)
		if err != nil {
			return err
		}
		if runPeers != nil {
			daemon.start(runPeers)
		}
	}

	mgr, err := connectManager(ctx, c, st, log, events, metrics, fleet)
	if mgr == nil {
		return err // a usage error, or a signal during start-up
	}

	log.Info("agent running", "consumer", consumerName, "group", c.String(flagGroup),
		"directory", c.String(flagDirectory), "workers", workersText(c))
	consumer, renewer, err := newWorkers(c, st, log, mgr, metrics, workerGates{
		static: static, ask: ask, preflight: preflight, consumerName: consumerName,
	})
	if err != nil {
		return err
	}
	ready.Store(true)
	checker := manager.NewChecker(manager.CheckerConfig{Store: st, Logger: log, Interval: c.Duration(flagCheckInterval)})
	announcer := manager.NewAnnouncer(manager.AnnouncerConfig{Store: st, Static: static, Ask: ask != nil, Name: consumerName, Logger: log})
	// The consumer and the renewer get their shutdown grace at the same
	// time, not one after the other, and both count it from the signal.
	daemon.start(consumer.Run, renewer.Run, checker.Run, announcer.Run)
	err = daemon.wait(func() {
		log.Info("shutting down: running orders and renewals may finish", "grace", c.Duration(flagGrace))
	})
	log.Info("agent stopped")
	return err
}

// startHTTP serves /metrics, /healthz and /readyz on --http-listen, if set,
// in a stage of the daemon; /readyz passes once ready is set and Redis
// answers.
func startHTTP(daemon *stages, c *cli.Context, st *store.Store, metrics *telemetry.Metrics, log *slog.Logger, ready *atomic.Bool) error {
	addr := c.String(flagHTTPListen)
	if addr == "" {
		return nil
	}
	srv, err := telemetry.NewServer(addr, metrics, func(ctx context.Context) error {
		if !ready.Load() {
			return errors.New("not connected to the CA yet")
		}
		return st.Ping(ctx)
	}, log)
	if err != nil {
		return fmt.Errorf("--%s: %w", flagHTTPListen, err)
	}
	daemon.start(srv.Run)
	return nil
}

// connectManager builds the manager, retrying while Redis or the CA is down
// at start instead of exiting, with a pause that grows so neither is
// hammered, up to the pause of the running agents' probes, so the names
// queued meanwhile follow the CA's return within seconds. It returns a nil
// manager when ctx ends first, with the error of a configuration that
// waiting cannot fix (directory, key type, DNS provider): bad usage, exit 2.
func connectManager(ctx context.Context, c *cli.Context, st *store.Store, log *slog.Logger, events *telemetry.Hub,
	metrics *telemetry.Metrics, fleet *peer.Fleet) (*manager.Manager, error) {
	retry := backoff.New(time.Second, manager.CAProbeMost)
	for {
		mgr, err := newManager(ctx, c, st, log, events, metrics, fleet)
		if err == nil {
			return mgr, nil
		}
		var usage cli.ExitCoder
		if errors.As(err, &usage) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, nil // stopped during start-up: not a failure
		}
		wait := retry.Next()
		log.Error("starting", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(wait):
		}
	}
}

// consumerNameOf is --consumer, or the host name.
func consumerNameOf(c *cli.Context) (string, error) {
	name := c.String(flagConsumer)
	if name != "" {
		return name, nil
	}
	name, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("--%s not set and no host name: %w", flagConsumer, err)
	}
	return name, nil
}

// allowPolicy reads the allow rules of --allow and --allow-file, and the
// ask URL.
func allowPolicy(c *cli.Context, log *slog.Logger) (*policy.Policy, *policy.Ask, error) {
	rules := c.StringSlice(flagAllow)
	if file := c.String(flagAllowFile); file != "" {
		more, err := policy.ReadRulesFile(file)
		if err != nil {
			return nil, nil, usageErrorf("certagent: --%s: %v", flagAllowFile, err)
		}
		rules = append(rules, more...)
	}
	static, err := policy.ParsePolicy(rules)
	if err != nil {
		return nil, nil, usageErrorf("certagent: --%s: %v", flagAllow, err)
	}
	var ask *policy.Ask
	if u := c.String(flagAskURL); u != "" {
		if ask, err = policy.NewAsk(policy.AskConfig{URL: u, Timeout: c.Duration(flagAskTimeout)}); err != nil {
			return nil, nil, usageErrorf("certagent: --%s: %v", flagAskURL, err)
		}
	}
	if static.Empty() && ask == nil {
		log.Warn("no allow rules and no ask URL: only names added with `certagent allow add` will get a certificate")
	}
	return static, ask, nil
}

// workerGates are what decides, before any order, whether a name gets one.
type workerGates struct {
	static       *policy.Policy
	ask          *policy.Ask
	preflight    *policy.Preflight
	consumerName string
}

// newWorkers builds the stream consumer and the renewer over mgr, sharing
// the rate budgets, whose state the metrics show.
func newWorkers(c *cli.Context, st *store.Store, log *slog.Logger, mgr *manager.Manager, metrics *telemetry.Metrics,
	g workerGates) (consumer *manager.Consumer, renewer *manager.Renewer, err error) {
	budgetCfg, err := budgetConfig(c)
	if err != nil {
		return nil, nil, err
	}
	budgets, err := manager.NewBudgets(mgr, budgetCfg)
	if err != nil {
		return nil, nil, err
	}
	var ordersLeft func(context.Context) (int, error)
	if budgets.CountsOrders() {
		ordersLeft = budgets.OrdersLeft
	}
	if err := metrics.Register(telemetry.NewStateCollector(telemetry.StateConfig{
		Store: st, Group: c.String(flagGroup), OrdersLeft: ordersLeft, Logger: log,
	})); err != nil {
		return nil, nil, err
	}
	consumer = manager.NewConsumer(manager.ConsumerConfig{
		Store:   st,
		Manager: mgr,
		Decider: policy.NewDecider(policy.DeciderConfig{
			Store: st, Static: g.static, Ask: g.ask,
			AskTTL: c.Duration(flagAskTTL), DenyTTL: c.Duration(flagDenyTTL),
		}),
		Preflight:     g.preflight,
		Budgets:       budgets,
		RetryFirst:    c.Duration(flagRetryFirst),
		RetryMost:     c.Duration(flagRetryMax),
		Group:         c.String(flagGroup),
		Name:          g.consumerName,
		Workers:       c.Int(flagWorkers),
		ShutdownGrace: c.Duration(flagGrace),
		ReclaimIdle:   c.Duration(flagReclaim),
		Logger:        log,
	})
	renewer = manager.NewRenewer(manager.RenewerConfig{
		Manager:       mgr,
		Budgets:       budgets,
		Logger:        log,
		Interval:      c.Duration(flagRenewInterval),
		RetryBase:     c.Duration(flagRenewRetry),
		Workers:       c.Int(flagRenewConc),
		ShutdownGrace: c.Duration(flagGrace),
	})
	return consumer, renewer, nil
}

func newPreflight(c *cli.Context) (*policy.Preflight, error) {
	var addrs []netip.Addr
	for _, a := range c.StringSlice(flagPreflightAddrs) {
		addr, err := netip.ParseAddr(strings.TrimSpace(a))
		if err != nil {
			return nil, usageErrorf("certagent: --%s: %v", flagPreflightAddrs, err)
		}
		addrs = append(addrs, addr)
	}
	p, err := policy.NewPreflight(policy.PreflightConfig{
		Addresses:     addrs,
		CAAIdentities: c.StringSlice(flagPreflightCAA),
		Resolver:      c.String(flagDNSResolver),
	})
	if err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagDNSResolver, err)
	}
	return p, nil
}

// withSignals is for commands that should stop on SIGINT/SIGTERM.
func withSignals(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
}
