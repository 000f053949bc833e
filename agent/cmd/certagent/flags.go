package main

import (
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

// Flag names and the environment variables that set them.
const (
	flagRedisURL  = "redis-url"
	envRedisURL   = "CERTAGENT_REDIS_URL"
	flagKeyPrefix = "key-prefix"
	envKeyPrefix  = "CERTAGENT_KEY_PREFIX"
	flagLogLevel  = "log-level"
	envLogLevel   = "CERTAGENT_LOG_LEVEL"

	flagDirectory = "acme-directory"
	envDirectory  = "CERTAGENT_ACME_DIRECTORY"
	flagEmail     = "email"
	envEmail      = "CERTAGENT_EMAIL"
	flagCARoots   = "ca-roots"
	envCARoots    = "CERTAGENT_CA_ROOTS"
	flagKeyType   = "key-type"
	envKeyType    = "CERTAGENT_KEY_TYPE"
	flagTimeout   = "order-timeout"
	envTimeout    = "CERTAGENT_ORDER_TIMEOUT"
	flagProfile   = "profile"
	envProfile    = "CERTAGENT_PROFILE"
	flagEABKID    = "eab-kid"
	envEABKID     = "CERTAGENT_EAB_KID"
	flagEABHMAC   = "eab-hmac"
	envEABHMAC    = "CERTAGENT_EAB_HMAC"
	flagFallbacks = "fallback-directory"
	envFallbacks  = "CERTAGENT_FALLBACK_DIRECTORIES"

	flagRenewInterval = "renew-interval"
	envRenewInterval  = "CERTAGENT_RENEW_INTERVAL"
	flagRenewRetry    = "renew-retry"
	envRenewRetry     = "CERTAGENT_RENEW_RETRY"

	flagAllow    = "allow"
	envAllow     = "CERTAGENT_ALLOW"
	flagGroup    = "group"
	envGroup     = "CERTAGENT_GROUP"
	flagConsumer = "consumer"
	envConsumer  = "CERTAGENT_CONSUMER"
	flagWorkers  = "workers"
	envWorkers   = "CERTAGENT_WORKERS"
	flagGrace    = "shutdown-grace"
	envGrace     = "CERTAGENT_SHUTDOWN_GRACE"

	flagSAN  = "san"
	flagJSON = "json"

	flagFromFile = "from-file"
	flagDue      = "due"
	flagForce    = "force"
	flagReason   = "reason"
	flagReissue  = "reissue"
	flagCertbot  = "certbot"
	flagCert     = "cert"
	flagKey      = "key"
	flagOut      = "out"
	flagExpiring = "expiring"
	flagStatus   = "status"
	flagNext     = "next"
)

func redisFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagRedisURL, EnvVars: []string{envRedisURL}, Value: "redis://127.0.0.1:6379/0",
			Usage: "Redis URL (redis://[user:password@]host:port/db or rediss:// for TLS)"},
		&cli.StringFlag{Name: flagKeyPrefix, EnvVars: []string{envKeyPrefix}, Value: store.DefaultPrefix,
			Usage: "prefix of every Redis key; nginx must use the same"},
		&cli.StringFlag{Name: flagLogLevel, EnvVars: []string{envLogLevel}, Value: "info",
			Usage: "debug, info, warn or error"},
	}
}

func acmeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagDirectory, EnvVars: []string{envDirectory}, Value: acmeclient.LetsEncryptProduction,
			Usage: "ACME directory URL, or a preset: letsencrypt, letsencrypt-staging"},
		&cli.StringSliceFlag{Name: flagFallbacks, EnvVars: []string{envFallbacks},
			Usage: "further ACME directories (URLs or presets) tried in turn when the CAs before fail; same e-mail, roots and key type, no EAB; comma-separated"},
		&cli.StringFlag{Name: flagProfile, EnvVars: []string{envProfile},
			Usage: "ACME profile to ask for, e.g. shortlived or tlsserver at Let's Encrypt (default: the CA's default)"},
		&cli.StringFlag{Name: flagEABKID, EnvVars: []string{envEABKID},
			Usage: "External Account Binding key id, for CAs that require it (with --" + flagEABHMAC + ")"},
		&cli.StringFlag{Name: flagEABHMAC, EnvVars: []string{envEABHMAC},
			Usage: "External Account Binding HMAC key, base64url as the CA gives it"},
		&cli.StringFlag{Name: flagEmail, EnvVars: []string{envEmail}, Usage: "contact e-mail of the ACME account"},
		&cli.StringSliceFlag{Name: flagCARoots, EnvVars: []string{envCARoots},
			Usage: "PEM files of extra roots trusted for the ACME server's HTTPS (private CAs); comma-separated"},
		&cli.StringFlag{Name: flagKeyType, EnvVars: []string{envKeyType}, Value: "ec256",
			Usage: "certificate key type: ec256, ec384, rsa2048 or rsa4096"},
		&cli.DurationFlag{Name: flagTimeout, EnvVars: []string{envTimeout}, Value: 2 * time.Minute,
			Usage: "how long one order may take"},
	}
}

func withFlags(groups ...[]cli.Flag) []cli.Flag {
	var all []cli.Flag
	for _, g := range groups {
		all = append(all, g...)
	}
	return all
}
