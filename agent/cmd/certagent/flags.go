package main

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

// Flag names and the environment variables that set them.
const (
	flagRedisURL       = "redis-url"
	envRedisURL        = "CERTAGENT_REDIS_URL"
	flagKeyPrefix      = "key-prefix"
	envKeyPrefix       = "CERTAGENT_KEY_PREFIX"
	flagSentinelMaster = "redis-sentinel-master"
	envSentinelMaster  = "CERTAGENT_REDIS_SENTINEL_MASTER"
	flagSentinels      = "redis-sentinels"
	envSentinels       = "CERTAGENT_REDIS_SENTINELS"
	flagSentinelPass   = "redis-sentinel-password"
	envSentinelPass    = "CERTAGENT_REDIS_SENTINEL_PASSWORD"
	flagCluster        = "redis-cluster"
	envCluster         = "CERTAGENT_REDIS_CLUSTER"
	flagRedisCA        = "redis-ca"
	envRedisCA         = "CERTAGENT_REDIS_CA"
	flagWaitReplicas   = "redis-wait-replicas"
	envWaitReplicas    = "CERTAGENT_REDIS_WAIT_REPLICAS"
	flagLogLevel       = "log-level"
	envLogLevel        = "CERTAGENT_LOG_LEVEL"
	flagLogFormat      = "log-format"
	envLogFormat       = "CERTAGENT_LOG_FORMAT"

	flagHTTPListen    = "http-listen"
	envHTTPListen     = "CERTAGENT_HTTP_LISTEN"
	flagWebhookURL    = "webhook-url"
	envWebhookURL     = "CERTAGENT_WEBHOOK_URL"
	flagWebhookSecret = "webhook-secret"
	envWebhookSecret  = "CERTAGENT_WEBHOOK_SECRET"

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
	flagDNS       = "dns-provider"
	envDNS        = "CERTAGENT_DNS_PROVIDER"
	flagDNSNames  = "dns-names"
	envDNSNames   = "CERTAGENT_DNS_NAMES"
	flagDNS01Res  = "dns01-resolver"
	envDNS01Res   = "CERTAGENT_DNS01_RESOLVER"

	flagRenewInterval = "renew-interval"
	envRenewInterval  = "CERTAGENT_RENEW_INTERVAL"
	flagRenewRetry    = "renew-retry"
	envRenewRetry     = "CERTAGENT_RENEW_RETRY"
	flagRenewConc     = "renew-concurrency"
	envRenewConc      = "CERTAGENT_RENEW_CONCURRENCY"
	flagCheckInterval = "check-interval"
	envCheckInterval  = "CERTAGENT_CHECK_INTERVAL"

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
	flagReclaim  = "reclaim-idle"
	envReclaim   = "CERTAGENT_RECLAIM_IDLE"
	flagLockTTL  = "lock-ttl"
	envLockTTL   = "CERTAGENT_LOCK_TTL"

	flagAllowFile      = "allow-file"
	envAllowFile       = "CERTAGENT_ALLOW_FILE"
	flagAskURL         = "ask-url"
	envAskURL          = "CERTAGENT_ASK_URL"
	flagAskTimeout     = "ask-timeout"
	envAskTimeout      = "CERTAGENT_ASK_TIMEOUT"
	flagAskTTL         = "ask-ttl"
	envAskTTL          = "CERTAGENT_ASK_TTL"
	flagDenyTTL        = "deny-ttl"
	envDenyTTL         = "CERTAGENT_DENY_TTL"
	flagPreflightAddrs = "preflight-addresses"
	envPreflightAddrs  = "CERTAGENT_PREFLIGHT_ADDRESSES"
	flagPreflightCAA   = "preflight-caa"
	envPreflightCAA    = "CERTAGENT_PREFLIGHT_CAA"
	flagDNSResolver    = "dns-resolver"
	envDNSResolver     = "CERTAGENT_DNS_RESOLVER"
	flagRetryFirst     = "retry-first"
	envRetryFirst      = "CERTAGENT_RETRY_FIRST"
	flagRetryMax       = "retry-max"
	envRetryMax        = "CERTAGENT_RETRY_MAX"
	flagLimitOrders    = "limit-orders"
	envLimitOrders     = "CERTAGENT_LIMIT_ORDERS"
	flagOrdersWindow   = "limit-orders-window"
	envOrdersWindow    = "CERTAGENT_LIMIT_ORDERS_WINDOW"
	flagLimitCerts     = "limit-certs"
	envLimitCerts      = "CERTAGENT_LIMIT_CERTS"
	flagCertsWindow    = "limit-certs-window"
	envCertsWindow     = "CERTAGENT_LIMIT_CERTS_WINDOW"
	flagLimitFailed    = "limit-failed"
	envLimitFailed     = "CERTAGENT_LIMIT_FAILED"
	flagFailedWindow   = "limit-failed-window"
	envFailedWindow    = "CERTAGENT_LIMIT_FAILED_WINDOW"
	flagRenewalShare   = "renewal-share"
	envRenewalShare    = "CERTAGENT_RENEWAL_SHARE"
	flagRateLimits     = "rate-limits"
	envRateLimits      = "CERTAGENT_RATE_LIMITS"

	flagSite             = "site"
	envSite              = "CERTAGENT_SITE"
	flagPeer             = "peer"
	envPeers             = "CERTAGENT_PEERS"
	flagPeersFile        = "peers-file"
	envPeersFile         = "CERTAGENT_PEERS_FILE"
	flagPeerSecretFile   = "peer-secret-file"
	envPeerSecretFile    = "CERTAGENT_PEER_SECRET_FILE"
	flagPeerCA           = "peer-ca"
	envPeerCA            = "CERTAGENT_PEER_CA"
	flagPeerTokenRule    = "peer-token-rule"
	envPeerTokenRule     = "CERTAGENT_PEER_TOKEN_RULE"
	flagPeerQuorum       = "peer-quorum"
	envPeerQuorum        = "CERTAGENT_PEER_QUORUM"
	flagPeerTimeout      = "peer-timeout"
	envPeerTimeout       = "CERTAGENT_PEER_TIMEOUT"
	flagPeerListen       = "peer-listen"
	envPeerListen        = "CERTAGENT_PEER_LISTEN"
	flagPeerTLSCert      = "peer-tls-cert"
	envPeerTLSCert       = "CERTAGENT_PEER_TLS_CERT"
	flagPeerTLSKey       = "peer-tls-key"
	envPeerTLSKey        = "CERTAGENT_PEER_TLS_KEY"
	flagPeerSyncInterval = "peer-sync-interval"
	envPeerSyncInterval  = "CERTAGENT_PEER_SYNC_INTERVAL"

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

func redisFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: flagRedisURL, EnvVars: []string{envRedisURL}, Value: "redis://127.0.0.1:6379/0",
			Usage: "Redis URL (redis://[user:password@]host:port/db or rediss:// for TLS)"},
		&cli.StringFlag{Name: flagKeyPrefix, EnvVars: []string{envKeyPrefix}, Value: store.DefaultPrefix,
			Usage: "prefix of every Redis key; nginx must use the same"},
		&cli.StringFlag{Name: flagLogLevel, EnvVars: []string{envLogLevel}, Value: "info",
			Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: flagLogFormat, EnvVars: []string{envLogFormat}, Value: "text",
			Usage: "text (key=value lines) or json"},
	}, redisModeFlags()...)
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
		&cli.StringFlag{Name: flagDNS, EnvVars: []string{envDNS},
			Usage: "lego DNS provider answering DNS-01 (wildcards, --dns-names), configured by lego's own environment variables: " +
				strings.Join(acmeclient.DNSProviderNames(), ", ")},
		&cli.StringSliceFlag{Name: flagDNSNames, EnvVars: []string{envDNSNames},
			Usage: "names validated by DNS-01 instead of HTTP-01: example.com, *.example.com (every name below it), * (all); comma-separated"},
		&cli.StringFlag{Name: flagDNS01Res, EnvVars: []string{envDNS01Res},
			Usage: "host:port asked whether a DNS-01 TXT record is visible before the CA validates (default: the system resolver)"},
		&cli.StringFlag{Name: flagEmail, EnvVars: []string{envEmail}, Usage: "contact e-mail of the ACME account"},
		&cli.StringSliceFlag{Name: flagCARoots, EnvVars: []string{envCARoots},
			Usage: "PEM files of extra roots trusted for the ACME server's HTTPS (private CAs); comma-separated"},
		&cli.StringFlag{Name: flagKeyType, EnvVars: []string{envKeyType}, Value: "ec256",
			Usage: "certificate key type: ec256, ec384, rsa2048 or rsa4096"},
		&cli.DurationFlag{Name: flagTimeout, EnvVars: []string{envTimeout}, Value: 2 * time.Minute,
			Usage: "how long one order may take"},
	}
}

// gateFlags configure which names run may order and how it spares the CA.
func gateFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagAllowFile, EnvVars: []string{envAllowFile},
			Usage: "file of allow rules, one a line (# comments), added to --" + flagAllow},
		&cli.StringFlag{Name: flagAskURL, EnvVars: []string{envAskURL},
			Usage: "URL asked GET ?domain=NAME about names no rule allows: 2xx allows, 5xx or no answer means try later"},
		&cli.DurationFlag{Name: flagAskTimeout, EnvVars: []string{envAskTimeout}, Value: 5 * time.Second,
			Usage: "how long one question to the ask URL may take"},
		&cli.DurationFlag{Name: flagAskTTL, EnvVars: []string{envAskTTL}, Value: time.Hour,
			Usage: "how long an allowing answer of the ask URL is cached in Redis"},
		&cli.DurationFlag{Name: flagDenyTTL, EnvVars: []string{envDenyTTL}, Value: time.Hour,
			Usage: "how long a refused name is cached in Redis (until the allowlist changes)"},
		&cli.StringSliceFlag{Name: flagPreflightAddrs, EnvVars: []string{envPreflightAddrs},
			Usage: "the fleet's public addresses: a name must have an A or AAAA record among them before an order; comma-separated"},
		&cli.StringSliceFlag{Name: flagPreflightCAA, EnvVars: []string{envPreflightCAA},
			Usage: "the CA's CAA identities (letsencrypt.org): a name whose CAA records name other CAs only is not ordered; comma-separated"},
		&cli.StringFlag{Name: flagDNSResolver, EnvVars: []string{envDNSResolver},
			Usage: "host:port of the DNS server the pre-flight checks ask (default: the first of /etc/resolv.conf)"},
		&cli.DurationFlag{Name: flagRetryFirst, EnvVars: []string{envRetryFirst}, Value: time.Minute,
			Usage: "pause after a name's first failure; it doubles with every further failure"},
		&cli.DurationFlag{Name: flagRetryMax, EnvVars: []string{envRetryMax}, Value: 24 * time.Hour,
			Usage: "longest pause between two attempts for a failing name"},
		&cli.StringFlag{Name: flagRateLimits, EnvVars: []string{envRateLimits}, Value: rateLimitsAuto,
			Usage: "whose limits the fleet's budgets follow: auto (Let's Encrypt's at its directories, none at other CAs), " +
				"letsencrypt (Let's Encrypt's at any CA) or none; --" + flagLimitOrders + ", --" + flagLimitCerts +
				" and --" + flagLimitFailed + " set one limit for any CA"},
		&cli.IntFlag{Name: flagLimitOrders, EnvVars: []string{envLimitOrders},
			Usage: "new orders per account per --" + flagOrdersWindow + ", fleet-wide (default: 300 under --" + flagRateLimits + " rules, else none)"},
		&cli.DurationFlag{Name: flagOrdersWindow, EnvVars: []string{envOrdersWindow}, Value: 3 * time.Hour,
			Usage: "window of --" + flagLimitOrders},
		&cli.IntFlag{Name: flagLimitCerts, EnvVars: []string{envLimitCerts},
			Usage: "certificates per registered domain per --" + flagCertsWindow + " (default: 50 under --" + flagRateLimits + " rules, else none)"},
		&cli.DurationFlag{Name: flagCertsWindow, EnvVars: []string{envCertsWindow}, Value: 7 * 24 * time.Hour,
			Usage: "window of --" + flagLimitCerts},
		&cli.IntFlag{Name: flagLimitFailed, EnvVars: []string{envLimitFailed},
			Usage: "failed validations per name per --" + flagFailedWindow + " before the name waits (default: 5 under --" + flagRateLimits + " rules, else none)"},
		&cli.DurationFlag{Name: flagFailedWindow, EnvVars: []string{envFailedWindow}, Value: time.Hour,
			Usage: "window of --" + flagLimitFailed},
		&cli.Float64Flag{Name: flagRenewalShare, EnvVars: []string{envRenewalShare}, Value: 0.1,
			Usage: "share of each budget new names leave to renewals (0 < share < 1)"},
	}
}

// peerFlags configure the other sites of the fleet (docs/peers.md), for
// every command that orders.
func peerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagSite, EnvVars: []string{envSite},
			Usage: "this site's id, the same for every agent of the site; empty: no peer sites"},
		&cli.StringSliceFlag{Name: flagPeer, EnvVars: []string{envPeers},
			Usage: "a peer site as id=https://host:port, repeatable (comma-separated in the environment)"},
		&cli.StringFlag{Name: flagPeersFile, EnvVars: []string{envPeersFile},
			Usage: "file of id=https://host:port lines, one peer site each"},
		&cli.StringFlag{Name: flagPeerSecretFile, EnvVars: []string{envPeerSecretFile},
			Usage: "file holding the fleet's shared peer secret (at least 32 bytes), the same at every site"},
		&cli.StringSliceFlag{Name: flagPeerCA, EnvVars: []string{envPeerCA},
			Usage: "PEM files of the only roots trusted for the peers' certificates, e.g. the fleet's private CA (default: the system roots)"},
		&cli.StringFlag{Name: flagPeerTokenRule, EnvVars: []string{envPeerTokenRule}, Value: "majority",
			Usage: "sites that must hold an HTTP-01 token before validation: majority or all"},
		&cli.IntFlag{Name: flagPeerQuorum, EnvVars: []string{envPeerQuorum},
			Usage: "sites, this one included, whose lease an order needs (default: a majority)"},
		&cli.DurationFlag{Name: flagPeerTimeout, EnvVars: []string{envPeerTimeout}, Value: 5 * time.Second,
			Usage: "bound on each call to a peer site"},
	}
}

// peerServerFlags configure the peer API and the sync loops that only the
// long-running agent has.
func peerServerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: flagPeerListen, EnvVars: []string{envPeerListen},
			Usage: "address of the peer API (HTTPS); empty: this agent does not answer peers"},
		&cli.StringFlag{Name: flagPeerTLSCert, EnvVars: []string{envPeerTLSCert},
			Usage: "PEM certificate of the peer API"},
		&cli.StringFlag{Name: flagPeerTLSKey, EnvVars: []string{envPeerTLSKey},
			Usage: "PEM private key of the peer API"},
		&cli.DurationFlag{Name: flagPeerSyncInterval, EnvVars: []string{envPeerSyncInterval}, Value: time.Minute,
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
