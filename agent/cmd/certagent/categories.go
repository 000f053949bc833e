package main

import (
	"reflect"

	"github.com/urfave/cli/v2"
)

// The headings of the flags in a command's help, for run's sixty above all.
const (
	catRedis     = "Redis"
	catLogs      = "Logs, metrics and events"
	catACME      = "The CA (ACME)"
	catNames     = "Which names get a certificate"
	catPace      = "Pacing and the CA's rate limits"
	catAgent     = "The agent in its group"
	catRenewal   = "Renewal"
	catPeerSites = "Peer sites"
)

// categories names the heading of each flag that has one.
var categories = map[string]string{
	flagRedisURL: catRedis, flagKeyPrefix: catRedis, flagSentinelMaster: catRedis, flagSentinels: catRedis,
	flagSentinelPass: catRedis, flagCluster: catRedis, flagRedisCA: catRedis, flagWaitReplicas: catRedis,

	flagLogLevel: catLogs, flagLogFormat: catLogs, flagHTTPListen: catLogs, flagWebhookURL: catLogs,
	flagWebhookSecret: catLogs,

	flagDirectory: catACME, flagFallbacks: catACME, flagProfile: catACME, flagEABKID: catACME, flagEABHMAC: catACME,
	flagDNS: catACME, flagDNSNames: catACME, flagDNS01Res: catACME, flagEmail: catACME, flagCARoots: catACME,
	flagKeyType: catACME, flagTimeout: catACME,

	flagAllow: catNames, flagAllowFile: catNames, flagAskURL: catNames, flagAskTimeout: catNames, flagAskTTL: catNames,
	flagDenyTTL: catNames, flagPreflightAddrs: catNames, flagPreflightCAA: catNames, flagDNSResolver: catNames,

	flagRetryFirst: catPace, flagRetryMax: catPace, flagRateLimits: catPace, flagLimitOrders: catPace,
	flagOrdersWindow: catPace, flagLimitCerts: catPace, flagCertsWindow: catPace, flagLimitFailed: catPace,
	flagFailedWindow: catPace, flagRenewalShare: catPace,

	flagGroup: catAgent, flagConsumer: catAgent, flagWorkers: catAgent, flagWorkersMin: catAgent,
	flagWorkersMax: catAgent, flagGrace: catAgent, flagReclaim: catAgent, flagLockTTL: catAgent,

	flagRenewInterval: catRenewal, flagRenewRetry: catRenewal, flagCheckInterval: catRenewal, flagRenewConc: catRenewal,

	flagSite: catPeerSites, flagPeer: catPeerSites, flagPeersFile: catPeerSites, flagPeerSecretFile: catPeerSites,
	flagPeerCA: catPeerSites, flagPeerTokenRule: catPeerSites, flagPeerQuorum: catPeerSites,
	flagPeerTimeout: catPeerSites, flagPeerListen: catPeerSites, flagPeerTLSCert: catPeerSites,
	flagPeerTLSKey: catPeerSites, flagPeerSyncInterval: catPeerSites,
}

// setCategories gives every flag of cmds and of their subcommands the
// heading categories names for it. Here rather than at each flag: one
// table to read, and a new flag of run without one fails
// TestRunFlagsHaveCategories.
func setCategories(cmds []*cli.Command) {
	for _, cmd := range cmds {
		for _, f := range cmd.Flags {
			setCategory(f, categories[f.Names()[0]])
		}
		setCategories(cmd.Subcommands)
	}
}

// setCategory sets the Category field that every flag type of urfave/cli v2
// has, which no interface lets one set.
func setCategory(f cli.Flag, category string) {
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return
	}
	if field := v.Elem().FieldByName("Category"); field.IsValid() && field.CanSet() && field.Kind() == reflect.String {
		field.SetString(category)
	}
}
