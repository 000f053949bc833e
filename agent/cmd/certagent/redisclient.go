package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"
)

// redisModeFlags choose how the agent reaches Redis besides --redis-url:
// through Sentinel or as a Cluster client. They go with redisFlags.
func redisModeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagSentinelMaster, EnvVars: envVars(flagSentinelMaster),
			Usage: "Sentinel: the master name to follow (with --" + flagSentinels + "); --" + flagRedisURL + " then gives only user, password, database and TLS"},
		&cli.StringSliceFlag{Name: flagSentinels, EnvVars: envVars(flagSentinels),
			Usage: "Sentinel: host:port of the sentinels; comma-separated"},
		&cli.StringFlag{Name: flagSentinelPass, EnvVars: envVars(flagSentinelPass),
			FilePath: secretFile(flagSentinelPass), Action: trimSecret(flagSentinelPass),
			Usage: "Sentinel: password of the sentinels themselves, if they require one"},
		&cli.StringSliceFlag{Name: flagCluster, EnvVars: envVars(flagCluster),
			Usage: "Cluster: host:port of some cluster nodes; comma-separated. --" + flagRedisURL + " then gives only user, password and TLS, and --" +
				flagKeyPrefix + " must hold a hash tag such as {certagent}:"},
		&cli.StringFlag{Name: flagRedisCA, EnvVars: envVars(flagRedisCA),
			Usage: "PEM file of the roots that sign Redis's TLS certificate (rediss://), instead of the system roots"},
		&cli.IntFlag{Name: flagWaitReplicas, EnvVars: envVars(flagWaitReplicas), Action: atLeastInt(flagWaitReplicas, 0),
			Usage: "replicas an HTTP-01 token must reach (Redis WAIT, at most 1 s) before the CA is asked to validate; set it when nginx reads from replicas"},
	}
}

// newRedisClient builds the client of the configured mode. Every mode has
// ContextTimeoutEnabled, so a context deadline bounds each command.
func newRedisClient(c *cli.Context) (redis.UniversalClient, error) {
	opts, err := redis.ParseURL(c.String(flagRedisURL))
	if err != nil {
		// url.Error quotes the whole URL, password included: keep only why.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return nil, cli.Exit(fmt.Sprintf("certagent: --%s: %v", flagRedisURL, err), exitUsage)
	}
	if file := c.String(flagRedisCA); file != "" {
		if opts.TLSConfig == nil {
			return nil, cli.Exit(fmt.Sprintf("certagent: --%s needs a rediss:// --%s", flagRedisCA, flagRedisURL), exitUsage)
		}
		pemData, err := os.ReadFile(file)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("certagent: --%s: %v", flagRedisCA, err), exitUsage)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, cli.Exit(fmt.Sprintf("certagent: --%s: no PEM certificate in %s", flagRedisCA, file), exitUsage)
		}
		opts.TLSConfig.RootCAs = pool
	}
	master, sentinels, cluster := c.String(flagSentinelMaster), c.StringSlice(flagSentinels), c.StringSlice(flagCluster)
	switch {
	case master != "" && len(cluster) > 0:
		return nil, cli.Exit(fmt.Sprintf("certagent: --%s and --%s exclude each other", flagSentinelMaster, flagCluster), exitUsage)
	case (master == "") != (len(sentinels) == 0):
		return nil, cli.Exit(fmt.Sprintf("certagent: --%s and --%s go together", flagSentinelMaster, flagSentinels), exitUsage)
	case master != "":
		// The sentinels tell which node is the master; the URL's host is
		// not used. A failover makes the client reconnect to the new one.
		var tlsConfig *tls.Config
		if opts.TLSConfig != nil {
			// Each node has its own address: verify names, not one host.
			tlsConfig = opts.TLSConfig.Clone()
			tlsConfig.ServerName = ""
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: master, SentinelAddrs: trimAll(sentinels), SentinelPassword: c.String(flagSentinelPass),
			Username: opts.Username, Password: opts.Password, DB: opts.DB, TLSConfig: tlsConfig,
			ContextTimeoutEnabled: true,
		}), nil
	case len(cluster) > 0:
		if opts.DB != 0 {
			return nil, cli.Exit(fmt.Sprintf("certagent: --%s: Redis Cluster has only database 0", flagRedisURL), exitUsage)
		}
		if err := checkClusterPrefix(c.String(flagKeyPrefix)); err != nil {
			return nil, cli.Exit(fmt.Sprintf("certagent: --%s: %v", flagKeyPrefix, err), exitUsage)
		}
		var tlsConfig *tls.Config
		if opts.TLSConfig != nil {
			tlsConfig = opts.TLSConfig.Clone()
			tlsConfig.ServerName = ""
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: trimAll(cluster), Username: opts.Username, Password: opts.Password, TLSConfig: tlsConfig,
			ContextTimeoutEnabled: true,
		}), nil
	default:
		opts.ContextTimeoutEnabled = true
		return redis.NewClient(opts), nil
	}
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
