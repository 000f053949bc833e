package main

import (
	"errors"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
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

// storeConfig is how the agent reaches Redis, from the flags of redisFlags.
func storeConfig(c *cli.Context) store.Config {
	return store.Config{
		URL: c.String(flagRedisURL), CAFile: c.String(flagRedisCA),
		SentinelMaster: c.String(flagSentinelMaster), Sentinels: c.StringSlice(flagSentinels),
		SentinelPassword: c.String(flagSentinelPass), Cluster: c.StringSlice(flagCluster),
		KeyPrefix: c.String(flagKeyPrefix), WaitReplicas: c.Int(flagWaitReplicas),
	}
}

// settingFlags names the flag behind each setting of store.Config.
var settingFlags = map[store.Setting]string{
	store.SettingURL:          flagRedisURL,
	store.SettingCAFile:       flagRedisCA,
	store.SettingSentinel:     flagSentinelMaster,
	store.SettingCluster:      flagCluster,
	store.SettingKeyPrefix:    flagKeyPrefix,
	store.SettingWaitReplicas: flagWaitReplicas,
}

// storeOpenError turns a configuration the store refused into a usage
// error naming the flag.
func storeOpenError(err error) error {
	var cfgErr *store.ConfigError
	if errors.As(err, &cfgErr) {
		return usageErrorf("certagent: --%s: %v", settingFlags[cfgErr.Setting], cfgErr.Err)
	}
	return err
}
