package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Config says how to reach Redis: a standalone server by URL, a master
// followed through Sentinel, or a Cluster.
type Config struct {
	// URL is redis://[user:password@]host:port/db, or rediss:// for TLS.
	// With Sentinel or Cluster it gives only the user, password, database
	// and TLS.
	URL string
	// CAFile is a PEM file of the roots that sign Redis's TLS certificate,
	// instead of the system roots; it needs a rediss:// URL.
	CAFile string
	// SentinelMaster is the master name to follow, with Sentinels the
	// host:port of the sentinels and SentinelPassword their own password.
	SentinelMaster   string
	Sentinels        []string
	SentinelPassword string
	// Cluster holds the host:port of some cluster nodes. KeyPrefix must
	// then hold a hash tag (see checkClusterPrefix).
	Cluster []string
	// KeyPrefix starts every key; nginx must use the same.
	KeyPrefix string
	// WaitReplicas is how many replicas a token write waits for (see
	// Store.WaitForReplicas).
	WaitReplicas int
}

// Setting names the part of Config a ConfigError is about.
type Setting string

// The settings of Config that Open checks.
const (
	SettingURL          Setting = "url"
	SettingCAFile       Setting = "ca-file"
	SettingSentinel     Setting = "sentinel"
	SettingCluster      Setting = "cluster"
	SettingKeyPrefix    Setting = "key-prefix"
	SettingWaitReplicas Setting = "wait-replicas"
)

// ConfigError is a Config that Open cannot use: waiting cannot fix it.
type ConfigError struct {
	Setting Setting
	Err     error
}

func (e *ConfigError) Error() string { return string(e.Setting) + ": " + e.Err.Error() }

func (e *ConfigError) Unwrap() error { return e.Err }

func configError(s Setting, format string, args ...any) error {
	return &ConfigError{Setting: s, Err: fmt.Errorf(format, args...)}
}

// Open builds the client of the configured mode and the Store over it. It
// does not wait for Redis: the client connects at the first command, so an
// agent started while Redis is down comes up and retries. Every mode has
// ContextTimeoutEnabled, so a context deadline bounds each command. The
// error is a *ConfigError when cfg is unusable. Building the client does
// no I/O, so the context bounds nothing yet.
func Open(_ context.Context, cfg Config) (*Store, error) {
	if cfg.WaitReplicas < 0 {
		return nil, configError(SettingWaitReplicas, "%d is negative", cfg.WaitReplicas)
	}
	rdb, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	st := New(rdb, Keys{Prefix: cfg.KeyPrefix})
	st.WaitForReplicas(cfg.WaitReplicas)
	return st, nil
}

// Close closes the client and its connections.
func (s *Store) Close() error { return s.rdb.Close() }

// Ping asks Redis for an answer, for health checks.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("pinging Redis: %w", err)
	}
	return nil
}

func newClient(cfg Config) (redis.UniversalClient, error) {
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		// url.Error quotes the whole URL, password included: keep only why.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return nil, &ConfigError{Setting: SettingURL, Err: err}
	}
	if cfg.CAFile != "" {
		if err := useRoots(opts, cfg.CAFile); err != nil {
			return nil, err
		}
	}
	sentinels, cluster := trimAll(cfg.Sentinels), trimAll(cfg.Cluster)
	switch {
	case cfg.SentinelMaster != "" && len(cluster) > 0:
		return nil, configError(SettingSentinel, "Sentinel and Cluster exclude each other")
	case (cfg.SentinelMaster == "") != (len(sentinels) == 0):
		return nil, configError(SettingSentinel, "the master name and the sentinels go together")
	case cfg.SentinelMaster != "":
		// The sentinels tell which node is the master; the URL's host is
		// not used. A failover makes the client reconnect to the new one.
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: cfg.SentinelMaster, SentinelAddrs: sentinels, SentinelPassword: cfg.SentinelPassword,
			Username: opts.Username, Password: opts.Password, DB: opts.DB, TLSConfig: anyHostTLS(opts.TLSConfig),
			ContextTimeoutEnabled: true,
		}), nil
	case len(cluster) > 0:
		if opts.DB != 0 {
			return nil, configError(SettingURL, "Redis Cluster has only database 0")
		}
		if err := checkClusterPrefix(cfg.KeyPrefix); err != nil {
			return nil, &ConfigError{Setting: SettingKeyPrefix, Err: err}
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cluster, Username: opts.Username, Password: opts.Password, TLSConfig: anyHostTLS(opts.TLSConfig),
			ContextTimeoutEnabled: true,
		}), nil
	default:
		opts.ContextTimeoutEnabled = true
		return redis.NewClient(opts), nil
	}
}

// useRoots makes the TLS client of opts trust the roots in file only.
func useRoots(opts *redis.Options, file string) error {
	if opts.TLSConfig == nil {
		return configError(SettingCAFile, "needs a rediss:// URL")
	}
	pemData, err := os.ReadFile(file)
	if err != nil {
		return &ConfigError{Setting: SettingCAFile, Err: err}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return configError(SettingCAFile, "no PEM certificate in %s", file)
	}
	opts.TLSConfig.RootCAs = pool
	return nil
}

// anyHostTLS is the TLS configuration for a client of several nodes: each
// has its own address, so names are verified per node, not against the
// URL's host.
func anyHostTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	c.ServerName = ""
	return c
}

// checkClusterPrefix refuses a key prefix without a hash tag. The agent
// writes a certificate, its indexes and the changes stream in one MULTI and
// fences it with WATCH; Redis Cluster runs those only on keys of one slot.
// A hash tag at the start of every key ({certagent}:cert:..., ...) puts all
// keys in one slot: the Cluster then gives failover, not sharding, which
// fits a data set of a few KB a certificate.
func checkClusterPrefix(prefix string) error {
	open := strings.IndexByte(prefix, '{')
	if open < 0 {
		return fmt.Errorf("%q has no hash tag: in Redis Cluster every key must hash to one slot; use e.g. {certagent}:", prefix)
	}
	end := strings.IndexByte(prefix[open+1:], '}')
	if end <= 0 {
		return fmt.Errorf("%q has no non-empty hash tag {...}: in Redis Cluster every key must hash to one slot; use e.g. {certagent}:", prefix)
	}
	return nil
}

func trimAll(list []string) []string {
	out := make([]string, 0, len(list))
	for _, s := range list {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// SetLogger sends go-redis's own log lines (pool and reconnection trouble)
// to log, so they keep the agent's log format, instead of the plain lines
// go-redis writes to stderr. It holds for every client of the process.
func SetLogger(log *slog.Logger) { redis.SetLogger(slogAdapter{log}) }

// slogAdapter gives go-redis's log lines to a slog.Logger. go-redis logs
// only trouble (a pool that cannot dial, a connection dropped), so they
// are warnings.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Printf(ctx context.Context, format string, v ...any) {
	a.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}
