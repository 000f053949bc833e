package main

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

// Flag names. The environment variable that sets a flag is envVars of its
// name, except for the two below.
const (
	flagRedisURL       = "redis-url"
	flagKeyPrefix      = "key-prefix"
	flagSentinelMaster = "redis-sentinel-master"
	flagSentinels      = "redis-sentinels"
	flagSentinelPass   = "redis-sentinel-password"
	flagCluster        = "redis-cluster"
	flagRedisCA        = "redis-ca"
	flagWaitReplicas   = "redis-wait-replicas"
	flagLogLevel       = "log-level"
	flagLogFormat      = "log-format"

	flagHTTPListen    = "http-listen"
	flagWebhookURL    = "webhook-url"
	flagWebhookSecret = "webhook-secret"

	flagDirectory = "acme-directory"
	flagEmail     = "email"
	flagCARoots   = "ca-roots"
	flagKeyType   = "key-type"
	flagTimeout   = "order-timeout"
	flagProfile   = "profile"
	flagEABKID    = "eab-kid"
	flagEABHMAC   = "eab-hmac"
	flagFallbacks = "fallback-directory"
	flagDNS       = "dns-provider"
	flagDNSNames  = "dns-names"
	flagDNS01Res  = "dns01-resolver"

	flagRenewInterval = "renew-interval"
	flagRenewRetry    = "renew-retry"
	flagRenewConc     = "renew-concurrency"
	flagCheckInterval = "check-interval"

	flagAllow    = "allow"
	flagGroup    = "group"
	flagConsumer = "consumer"
	flagWorkers  = "workers"
	flagGrace    = "shutdown-grace"
	flagReclaim  = "reclaim-idle"
	flagLockTTL  = "lock-ttl"

	flagAllowFile      = "allow-file"
	flagAskURL         = "ask-url"
	flagAskTimeout     = "ask-timeout"
	flagAskTTL         = "ask-ttl"
	flagDenyTTL        = "deny-ttl"
	flagPreflightAddrs = "preflight-addresses"
	flagPreflightCAA   = "preflight-caa"
	flagDNSResolver    = "dns-resolver"
	flagRetryFirst     = "retry-first"
	flagRetryMax       = "retry-max"
	flagLimitOrders    = "limit-orders"
	flagOrdersWindow   = "limit-orders-window"
	flagLimitCerts     = "limit-certs"
	flagCertsWindow    = "limit-certs-window"
	flagLimitFailed    = "limit-failed"
	flagFailedWindow   = "limit-failed-window"
	flagRenewalShare   = "renewal-share"
	flagRateLimits     = "rate-limits"

	flagSite             = "site"
	flagPeer             = "peer"
	flagPeersFile        = "peers-file"
	flagPeerSecretFile   = "peer-secret-file"
	flagPeerCA           = "peer-ca"
	flagPeerTokenRule    = "peer-token-rule"
	flagPeerQuorum       = "peer-quorum"
	flagPeerTimeout      = "peer-timeout"
	flagPeerListen       = "peer-listen"
	flagPeerTLSCert      = "peer-tls-cert"
	flagPeerTLSKey       = "peer-tls-key"
	flagPeerSyncInterval = "peer-sync-interval"

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
	flagLimit    = "limit"
	flagAfter    = "after"
	flagCheck    = "check"
)

// The environment names that are not envVars of their flag's name: they name
// a list (the flags are repeated one value at a time), and are documented.
const (
	envFallbacks = "CERTAGENT_FALLBACK_DIRECTORIES"
	envPeers     = "CERTAGENT_PEERS"
)

// envVars returns the environment variable of the flag name: CERTAGENT_ and
// the name upper-cased, with "-" as "_" (--redis-url: CERTAGENT_REDIS_URL).
func envVars(name string) []string {
	return []string{"CERTAGENT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

func redisFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: flagRedisURL, EnvVars: envVars(flagRedisURL), Value: "redis://127.0.0.1:6379/0",
			Usage: "Redis URL (redis://[user:password@]host:port/db or rediss:// for TLS)"},
		&cli.StringFlag{Name: flagKeyPrefix, EnvVars: envVars(flagKeyPrefix), Value: store.DefaultPrefix,
			Usage: "prefix of every Redis key; nginx must use the same"},
		&cli.StringFlag{Name: flagLogLevel, EnvVars: envVars(flagLogLevel), Value: "info",
			Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: flagLogFormat, EnvVars: envVars(flagLogFormat), Value: "text",
			Usage: "text (key=value lines) or json"},
	}, redisModeFlags()...)
}

func acmeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagDirectory, EnvVars: envVars(flagDirectory), Value: acmeclient.LetsEncryptProduction,
			Usage: "ACME directory URL, or a preset: letsencrypt, letsencrypt-staging"},
		&cli.StringSliceFlag{Name: flagFallbacks, EnvVars: []string{envFallbacks},
			Usage: "further ACME directories (URLs or presets) tried in turn when the CAs before fail; same e-mail, roots and key type, no EAB; comma-separated"},
		&cli.StringFlag{Name: flagProfile, EnvVars: envVars(flagProfile),
			Usage: "ACME profile to ask for, e.g. shortlived or tlsserver at Let's Encrypt (default: the CA's default)"},
		&cli.StringFlag{Name: flagEABKID, EnvVars: envVars(flagEABKID),
			Usage: "External Account Binding key id, for CAs that require it (with --" + flagEABHMAC + ")"},
		&cli.StringFlag{Name: flagEABHMAC, EnvVars: envVars(flagEABHMAC),
			FilePath: secretFile(flagEABHMAC), Action: trimSecret(flagEABHMAC),
			Usage: "External Account Binding HMAC key, base64url as the CA gives it"},
		&cli.StringFlag{Name: flagDNS, EnvVars: envVars(flagDNS),
			Usage: "lego DNS provider answering DNS-01 (wildcards, --dns-names), configured by lego's own environment variables: " +
				strings.Join(acmeclient.DNSProviderNames(), ", ")},
		&cli.StringSliceFlag{Name: flagDNSNames, EnvVars: envVars(flagDNSNames),
			Usage: "names validated by DNS-01 instead of HTTP-01: example.com, *.example.com (every name below it), * (all); comma-separated"},
		&cli.StringFlag{Name: flagDNS01Res, EnvVars: envVars(flagDNS01Res),
			Usage: "host:port asked whether a DNS-01 TXT record is visible before the CA validates (default: the system resolver)"},
		&cli.StringFlag{Name: flagEmail, EnvVars: envVars(flagEmail), Usage: "contact e-mail of the ACME account"},
		&cli.StringSliceFlag{Name: flagCARoots, EnvVars: envVars(flagCARoots),
			Usage: "PEM files of extra roots trusted for the ACME server's HTTPS (private CAs); comma-separated"},
		&cli.StringFlag{Name: flagKeyType, EnvVars: envVars(flagKeyType), Value: "ec256",
			Usage: "certificate key type: ec256, ec384, rsa2048 or rsa4096"},
		&cli.DurationFlag{Name: flagTimeout, EnvVars: envVars(flagTimeout), Value: 2 * time.Minute,
			Usage: "how long one order may take"},
	}
}

// gateFlags configure which names run may order and how it spares the CA.
func gateFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagAllowFile, EnvVars: envVars(flagAllowFile),
			Usage: "file of allow rules, one a line (# comments), added to --" + flagAllow},
		&cli.StringFlag{Name: flagAskURL, EnvVars: envVars(flagAskURL),
			Usage: "URL asked GET ?domain=NAME about names no rule allows: 2xx allows, 5xx or no answer means try later"},
		&cli.DurationFlag{Name: flagAskTimeout, EnvVars: envVars(flagAskTimeout), Value: 5 * time.Second,
			Usage: "how long one question to the ask URL may take"},
		&cli.DurationFlag{Name: flagAskTTL, EnvVars: envVars(flagAskTTL), Value: time.Hour,
			Usage: "how long an allowing answer of the ask URL is cached in Redis"},
		&cli.DurationFlag{Name: flagDenyTTL, EnvVars: envVars(flagDenyTTL), Value: time.Hour,
			Usage: "how long a refused name is cached in Redis (until the allowlist changes)"},
		&cli.StringSliceFlag{Name: flagPreflightAddrs, EnvVars: envVars(flagPreflightAddrs),
			Usage: "the fleet's public addresses: a name must have an A or AAAA record among them before an order; comma-separated"},
		&cli.StringSliceFlag{Name: flagPreflightCAA, EnvVars: envVars(flagPreflightCAA),
			Usage: "the CA's CAA identities (letsencrypt.org): a name whose CAA records name other CAs only is not ordered; comma-separated"},
		&cli.StringFlag{Name: flagDNSResolver, EnvVars: envVars(flagDNSResolver),
			Usage: "host:port of the DNS server the pre-flight checks ask (default: the first of /etc/resolv.conf)"},
		&cli.DurationFlag{Name: flagRetryFirst, EnvVars: envVars(flagRetryFirst), Value: time.Minute,
			Usage: "pause after a name's first failure; it doubles with every further failure"},
		&cli.DurationFlag{Name: flagRetryMax, EnvVars: envVars(flagRetryMax), Value: 24 * time.Hour,
			Usage: "longest pause between two attempts for a failing name"},
		&cli.StringFlag{Name: flagRateLimits, EnvVars: envVars(flagRateLimits), Value: rateLimitsAuto,
			Usage: "whose limits the fleet's budgets follow: auto (Let's Encrypt's at its directories, none at other CAs), " +
				"letsencrypt (Let's Encrypt's at any CA) or none; --" + flagLimitOrders + ", --" + flagLimitCerts +
				" and --" + flagLimitFailed + " set one limit for any CA"},
		&cli.IntFlag{Name: flagLimitOrders, EnvVars: envVars(flagLimitOrders), Action: atLeastInt(flagLimitOrders, 0),
			Usage: "new orders per account per --" + flagOrdersWindow + ", fleet-wide (default: 300 under --" + flagRateLimits + " rules, else none)"},
		&cli.DurationFlag{Name: flagOrdersWindow, EnvVars: envVars(flagOrdersWindow), Value: 3 * time.Hour,
			Usage: "window of --" + flagLimitOrders},
		&cli.IntFlag{Name: flagLimitCerts, EnvVars: envVars(flagLimitCerts), Action: atLeastInt(flagLimitCerts, 0),
			Usage: "certificates per registered domain per --" + flagCertsWindow + " (default: 50 under --" + flagRateLimits + " rules, else none)"},
		&cli.DurationFlag{Name: flagCertsWindow, EnvVars: envVars(flagCertsWindow), Value: 7 * 24 * time.Hour,
			Usage: "window of --" + flagLimitCerts},
		&cli.IntFlag{Name: flagLimitFailed, EnvVars: envVars(flagLimitFailed), Action: atLeastInt(flagLimitFailed, 0),
			Usage: "failed validations per name per --" + flagFailedWindow + " before the name waits (default: 5 under --" + flagRateLimits + " rules, else none)"},
		&cli.DurationFlag{Name: flagFailedWindow, EnvVars: envVars(flagFailedWindow), Value: time.Hour,
			Usage: "window of --" + flagLimitFailed},
		&cli.Float64Flag{Name: flagRenewalShare, EnvVars: envVars(flagRenewalShare), Value: 0.1, Action: betweenFloat(flagRenewalShare, 0, 1),
			Usage: "share of each budget new names leave to renewals (0 < share < 1)"},
	}
}

// peerFlags configure the other sites of the fleet (docs/peers.md), for
// every command that orders.
func peerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagSite, EnvVars: envVars(flagSite),
			Usage: "this site's id, the same for every agent of the site; empty: no peer sites"},
		&cli.StringSliceFlag{Name: flagPeer, EnvVars: []string{envPeers},
			Usage: "a peer site as id=https://host:port, repeatable (comma-separated in the environment)"},
		&cli.StringFlag{Name: flagPeersFile, EnvVars: envVars(flagPeersFile),
			Usage: "file of id=https://host:port lines, one peer site each"},
		&cli.StringFlag{Name: flagPeerSecretFile, EnvVars: envVars(flagPeerSecretFile),
			Usage: "file holding the fleet's shared peer secret (at least 32 bytes), the same at every site"},
		&cli.StringSliceFlag{Name: flagPeerCA, EnvVars: envVars(flagPeerCA),
			Usage: "PEM files of the only roots trusted for the peers' certificates, e.g. the fleet's private CA (default: the system roots)"},
		&cli.StringFlag{Name: flagPeerTokenRule, EnvVars: envVars(flagPeerTokenRule), Value: "majority",
			Usage: "sites that must hold an HTTP-01 token before validation: majority or all"},
		&cli.IntFlag{Name: flagPeerQuorum, EnvVars: envVars(flagPeerQuorum),
			Usage: "sites, this one included, whose lease an order needs (default: a majority)"},
		&cli.DurationFlag{Name: flagPeerTimeout, EnvVars: envVars(flagPeerTimeout), Value: 5 * time.Second,
			Usage: "bound on each call to a peer site"},
	}
}

// peerServerFlags configure the peer API and the sync loops that only the
// long-running agent has.
func peerServerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagPeerListen, EnvVars: envVars(flagPeerListen),
			Usage: "address of the peer API (HTTPS); empty: this agent does not answer peers"},
		&cli.StringFlag{Name: flagPeerTLSCert, EnvVars: envVars(flagPeerTLSCert),
			Usage: "PEM certificate of the peer API"},
		&cli.StringFlag{Name: flagPeerTLSKey, EnvVars: envVars(flagPeerTLSKey),
			Usage: "PEM private key of the peer API"},
		&cli.DurationFlag{Name: flagPeerSyncInterval, EnvVars: envVars(flagPeerSyncInterval), Value: time.Minute,
			Usage: "period of the inventory exchange with the peer sites"},
	}
}

func withFlags(groups ...[]cli.Flag) []cli.Flag {
	var all []cli.Flag
	for _, g := range groups {
		all = append(all, g...)
	}
	return all
}

// The validation actions of flags (urfave/cli runs a flag's Action when the
// flag or its environment variable is set): a value out of range is a usage
// error naming the flag, before the command starts.

// atLeastInt refuses values of the int flag name below least.
func atLeastInt(name string, least int) func(*cli.Context, int) error {
	return func(_ *cli.Context, v int) error {
		if v < least {
			return usageErrorf("certagent: --%s: %d is below %d", name, v, least)
		}
		return nil
	}
}

// atLeastDuration refuses values of the duration flag name below least, and
// says why.
func atLeastDuration(name string, least time.Duration, why string) func(*cli.Context, time.Duration) error {
	return func(_ *cli.Context, v time.Duration) error {
		if v < least {
			return usageErrorf("certagent: --%s: %s is below %s (%s)", name, v, least, why)
		}
		return nil
	}
}

// betweenFloat refuses values of the float flag name outside (low, high).
func betweenFloat(name string, low, high float64) func(*cli.Context, float64) error {
	return func(_ *cli.Context, v float64) error {
		if v <= low || v >= high {
			return usageErrorf("certagent: --%s: %v is not between %v and %v", name, v, low, high)
		}
		return nil
	}
}

// secretsDir holds the files a secret flag is read from when neither the flag
// nor its environment variable is set: Docker's and Compose's secrets
// (/run/secrets/certagent_webhook_secret for --webhook-secret).
var secretsDir = "/run/secrets"

// secretFile is the FilePath of the secret flag name.
func secretFile(name string) string {
	return secretsDir + "/certagent_" + strings.ReplaceAll(name, "-", "_")
}

// trimSecret is the Action of a secret flag: the line end a file (or a
// variable) holds after the secret is not part of it.
func trimSecret(name string) func(*cli.Context, string) error {
	return func(c *cli.Context, v string) error {
		if trimmed := strings.TrimRight(v, "\r\n"); trimmed != v {
			return c.Set(name, trimmed)
		}
		return nil
	}
}
