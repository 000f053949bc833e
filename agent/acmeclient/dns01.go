package acmeclient

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/providers/dns/cloudflare"
	"github.com/go-acme/lego/v4/providers/dns/cloudns"
	"github.com/go-acme/lego/v4/providers/dns/digitalocean"
	"github.com/go-acme/lego/v4/providers/dns/duckdns"
	"github.com/go-acme/lego/v4/providers/dns/dynu"
	"github.com/go-acme/lego/v4/providers/dns/exec"
	"github.com/go-acme/lego/v4/providers/dns/gandiv5"
	"github.com/go-acme/lego/v4/providers/dns/godaddy"
	"github.com/go-acme/lego/v4/providers/dns/hetzner"
	"github.com/go-acme/lego/v4/providers/dns/hostingde"
	"github.com/go-acme/lego/v4/providers/dns/httpnet"
	"github.com/go-acme/lego/v4/providers/dns/httpreq"
	"github.com/go-acme/lego/v4/providers/dns/mythicbeasts"
	"github.com/go-acme/lego/v4/providers/dns/namecheap"
	"github.com/go-acme/lego/v4/providers/dns/pdns"
)

// dnsProviders are the lego DNS providers the agent is built with, by lego's
// name for them. Each reads its settings from lego's own environment
// variables (e.g. CLOUDFLARE_DNS_API_TOKEN, EXEC_PATH). Providers that need
// modules the agent does not otherwise carry (cloud SDKs) are left out; one
// is added with a line here and `go get` of what it needs.
var dnsProviders = map[string]func() (challenge.Provider, error){
	"cloudflare":   func() (challenge.Provider, error) { return cloudflare.NewDNSProvider() },
	"cloudns":      func() (challenge.Provider, error) { return cloudns.NewDNSProvider() },
	"digitalocean": func() (challenge.Provider, error) { return digitalocean.NewDNSProvider() },
	"duckdns":      func() (challenge.Provider, error) { return duckdns.NewDNSProvider() },
	"dynu":         func() (challenge.Provider, error) { return dynu.NewDNSProvider() },
	"exec":         func() (challenge.Provider, error) { return exec.NewDNSProvider() },
	"gandiv5":      func() (challenge.Provider, error) { return gandiv5.NewDNSProvider() },
	"godaddy":      func() (challenge.Provider, error) { return godaddy.NewDNSProvider() },
	"hetzner":      func() (challenge.Provider, error) { return hetzner.NewDNSProvider() },
	"hostingde":    func() (challenge.Provider, error) { return hostingde.NewDNSProvider() },
	"httpnet":      func() (challenge.Provider, error) { return httpnet.NewDNSProvider() },
	"httpreq":      func() (challenge.Provider, error) { return httpreq.NewDNSProvider() },
	"mythicbeasts": func() (challenge.Provider, error) { return mythicbeasts.NewDNSProvider() },
	"namecheap":    func() (challenge.Provider, error) { return namecheap.NewDNSProvider() },
	"pdns":         func() (challenge.Provider, error) { return pdns.NewDNSProvider() },
}

// DNSProviderNames lists the providers NewDNSProvider knows, sorted.
func DNSProviderNames() []string {
	out := make([]string, 0, len(dnsProviders))
	for name := range dnsProviders {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// NewDNSProvider returns the lego DNS provider called name, configured from
// lego's environment variables for it.
func NewDNSProvider(name string) (challenge.Provider, error) {
	build, ok := dnsProviders[name]
	if !ok {
		return nil, fmt.Errorf("unknown DNS provider %q (known: %s)", name, strings.Join(DNSProviderNames(), ", "))
	}
	p, err := build()
	if err != nil {
		return nil, fmt.Errorf("DNS provider %s: %w", name, err)
	}
	return p, nil
}

// DNSRules says which names are validated by DNS-01 rather than HTTP-01:
// "example.com" that name, "*.example.com" every name below example.com and
// the wildcard itself, "*" every name. Wildcard certificates always use
// DNS-01 (the CA offers nothing else for them).
type DNSRules []string

// Match reports whether name (an authorization's identifier) uses DNS-01.
func (r DNSRules) Match(name string) bool {
	for _, rule := range r {
		switch parent, isSuffix := strings.CutPrefix(rule, "*."); {
		case rule == "*":
			return true
		case isSuffix && (strings.HasSuffix(name, "."+parent) || name == rule):
			return true
		case !isSuffix && name == rule:
			return true
		}
	}
	return false
}

// waitTXT waits until the resolver answers the TXT record the provider just
// published for domain, so the CA is not asked to validate before it can
// see it. The provider's own timeout and interval apply (lego's defaults:
// 60 s and 2 s).
func (c *Client) waitTXT(ctx context.Context, domain, keyAuth string) error {
	info := dns01.GetChallengeInfo(domain, keyAuth)
	timeout, interval := dns01.DefaultPropagationTimeout, dns01.DefaultPollingInterval
	if t, ok := c.cfg.DNSProvider.(challenge.ProviderTimeout); ok {
		timeout, interval = t.Timeout()
	}
	resolver := net.DefaultResolver
	if addr := c.cfg.DNSResolver; addr != "" {
		resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		records, err := resolver.LookupTXT(ctx, info.EffectiveFQDN)
		for _, r := range records {
			if r == info.Value {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the TXT record %s is not visible after %s (last lookup: %v)", info.EffectiveFQDN, timeout, err)
		case <-time.After(min(interval, c.cfg.MaxPoll*2)):
		}
	}
}
