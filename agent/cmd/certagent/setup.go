package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/store"
)

func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String(flagLogLevel))); err != nil {
		return nil, fmt.Errorf("--%s: %w", flagLogLevel, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

func openStore(c *cli.Context) (*store.Store, error) {
	opts, err := redis.ParseURL(c.String(flagRedisURL))
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flagRedisURL, err)
	}
	opts.ContextTimeoutEnabled = true
	return store.New(redis.NewClient(opts), store.Keys{Prefix: c.String(flagKeyPrefix)}), nil
}

func closeStore(st *store.Store) { _ = st.Client().Close() }

func newManager(ctx context.Context, c *cli.Context, st *store.Store, log *slog.Logger) (*manager.Manager, error) {
	client, err := acmeclient.New(ctx, acmeclient.Config{
		DirectoryURL: c.String(flagDirectory),
		Email:        c.String(flagEmail),
		KeyType:      c.String(flagKeyType),
		CARootFiles:  c.StringSlice(flagCARoots),
	}, st, acmeclient.NewHTTP01Provider(st, 0))
	if err != nil {
		return nil, err
	}
	return manager.New(manager.Config{
		Store:        st,
		Issuer:       client,
		Logger:       log,
		OrderTimeout: c.Duration(flagTimeout),
	}), nil
}
