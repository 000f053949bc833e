package main

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/store"
)

// The values of --rate-limits.
const (
	rateLimitsAuto        = "auto"
	rateLimitsLetsEncrypt = "letsencrypt"
	rateLimitsNone        = "none"
)

// budgetConfig reads the fleet's rate budgets from the flags: Let's
// Encrypt's limits at its directories (or wherever --rate-limits says), none
// at other CAs, and every --limit-* flag given for any CA.
func budgetConfig(c *cli.Context) (manager.BudgetConfig, error) {
	directory := acmeclient.ResolveDirectory(strings.TrimSpace(c.String(flagDirectory)))
	cfg := manager.BudgetConfig{
		// The id of the account key in Redis: over the directory URL, so that
		// agents given a preset and agents given its URL share one budget.
		Account:          store.AccountID(directory, c.String(flagEmail)),
		OrdersPerAccount: c.Int(flagLimitOrders),
		OrdersWindow:     c.Duration(flagOrdersWindow),
		CertsPerDomain:   c.Int(flagLimitCerts),
		CertsWindow:      c.Duration(flagCertsWindow),
		FailedPerName:    c.Int(flagLimitFailed),
		FailedWindow:     c.Duration(flagFailedWindow),
		RenewalShare:     c.Float64(flagRenewalShare),
		// An order tries every CA in turn, each within the order timeout,
		// under a lease that outlives a killed agent by the lease's TTL.
		OrderHold: c.Duration(flagTimeout)*time.Duration(1+len(c.StringSlice(flagFallbacks))) + c.Duration(flagLockTTL),
	}
	switch mode := c.String(flagRateLimits); mode {
	case rateLimitsAuto:
		if manager.IsLetsEncrypt(directory) {
			cfg = manager.LetsEncryptLimits(cfg)
		}
	case rateLimitsLetsEncrypt:
		cfg = manager.LetsEncryptLimits(cfg)
	case rateLimitsNone:
	default:
		return cfg, usageErrorf("certagent: --%s: %q is not auto, letsencrypt or none", flagRateLimits, mode)
	}
	return cfg, nil
}
