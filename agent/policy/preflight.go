package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrPreflight marks a name that failed a pre-flight check: ordering it
// would only burn a failed validation at the CA.
var ErrPreflight = errors.New("pre-flight check failed")

// ErrPreflightUnavailable marks a pre-flight check that could not be made:
// the resolver did not answer or failed (SERVFAIL). The name is not at fault
// and is looked at again later.
var ErrPreflightUnavailable = errors.New("pre-flight check not possible now")

// PreflightConfig configures the checks made before any order. Each check is
// off when its setting is empty.
type PreflightConfig struct {
	// Addresses of the fleet (the addresses clients and the CA reach nginx
	// at). When set, a name must have an A or AAAA record among them.
	// Default: none, check off.
	Addresses []netip.Addr
	// CAAIdentities are the CA's domain names as they appear in CAA "issue"
	// records ("letsencrypt.org"). When set, a name whose closest CAA record
	// set has "issue" records must name one of them. Default: none, check off.
	CAAIdentities []string
	// Resolver is the DNS server asked, host:port. Default: the first
	// nameserver of /etc/resolv.conf.
	Resolver string
	// Timeout bounds each DNS question. Default: 5 s.
	Timeout time.Duration
}

// Preflight checks a name's DNS before an order.
type Preflight struct {
	cfg    PreflightConfig
	client *dns.Client
}

// NewPreflight returns the checks for cfg, or nil when every check is off.
func NewPreflight(cfg PreflightConfig) (*Preflight, error) {
	if len(cfg.Addresses) == 0 && len(cfg.CAAIdentities) == 0 {
		return nil, nil
	}
	if cfg.Resolver == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("pre-flight checks: no DNS resolver configured, and reading /etc/resolv.conf: %w", err)
		}
		if len(conf.Servers) == 0 {
			return nil, errors.New("pre-flight checks: no DNS resolver configured and no nameserver in /etc/resolv.conf")
		}
		cfg.Resolver = net.JoinHostPort(conf.Servers[0], conf.Port)
	}
	if _, _, err := net.SplitHostPort(cfg.Resolver); err != nil {
		return nil, fmt.Errorf("pre-flight DNS resolver %q: want host:port: %w", cfg.Resolver, err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	for i, id := range cfg.CAAIdentities {
		cfg.CAAIdentities[i] = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(id), "."))
	}
	return &Preflight{cfg: cfg, client: &dns.Client{Timeout: cfg.Timeout}}, nil
}

// Check returns nil when name passes every enabled check, or an error
// wrapping ErrPreflight that says why not.
func (p *Preflight) Check(ctx context.Context, name string) error {
	if len(p.cfg.Addresses) > 0 {
		if err := p.checkAddresses(ctx, name); err != nil {
			return err
		}
	}
	if len(p.cfg.CAAIdentities) > 0 {
		if err := p.checkCAA(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

func (p *Preflight) checkAddresses(ctx context.Context, name string) error {
	var found []string
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		answer, err := p.query(ctx, name, qtype)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrPreflightUnavailable, name, err)
		}
		for _, rr := range answer {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			default:
				continue
			}
			addr, ok := netip.AddrFromSlice(ip)
			if !ok {
				continue
			}
			addr = addr.Unmap()
			for _, mine := range p.cfg.Addresses {
				if mine.Unmap() == addr {
					return nil
				}
			}
			found = append(found, addr.String())
		}
	}
	if len(found) == 0 {
		return fmt.Errorf("%w: %s has no A or AAAA record", ErrPreflight, name)
	}
	return fmt.Errorf("%w: %s resolves to %s, none of them an address of this fleet", ErrPreflight, name, strings.Join(found, ", "))
}

// checkCAA walks from name up to its top-level domain and applies the first
// CAA record set found (RFC 8659 section 3).
func (p *Preflight) checkCAA(ctx context.Context, name string) error {
	labels := dns.SplitDomainName(name)
	for i := 0; i < len(labels)-1; i++ {
		node := strings.Join(labels[i:], ".")
		answer, err := p.query(ctx, node, dns.TypeCAA)
		if err != nil {
			return fmt.Errorf("%w: CAA of %s: %w", ErrPreflightUnavailable, node, err)
		}
		var issuers []string
		sawCAA := false
		for _, rr := range answer {
			caa, ok := rr.(*dns.CAA)
			if !ok {
				continue
			}
			sawCAA = true
			if strings.EqualFold(caa.Tag, "issue") {
				domain, _, _ := strings.Cut(caa.Value, ";")
				issuers = append(issuers, strings.ToLower(strings.TrimSpace(domain)))
			}
		}
		if !sawCAA {
			continue
		}
		if len(issuers) == 0 {
			return nil // CAA records, but none restricting issuance
		}
		for _, issuer := range issuers {
			for _, id := range p.cfg.CAAIdentities {
				if issuer == id {
					return nil
				}
			}
		}
		return fmt.Errorf("%w: the CAA records of %s permit only %q, not this CA (%s)", ErrPreflight, node,
			issuers, strings.Join(p.cfg.CAAIdentities, ", "))
	}
	return nil
}

func (p *Preflight) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	msg := new(dns.Msg)
	msg.SetQuestion(dns.Fqdn(name), qtype)
	msg.RecursionDesired = true
	resp, _, err := p.client.ExchangeContext(ctx, msg, p.cfg.Resolver)
	if err == nil && resp.Truncated {
		tcp := *p.client
		tcp.Net = "tcp"
		resp, _, err = tcp.ExchangeContext(ctx, msg, p.cfg.Resolver)
	}
	if err != nil {
		return nil, fmt.Errorf("asking %s for %s %s: %w", p.cfg.Resolver, dns.TypeToString[qtype], name, err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return resp.Answer, nil
	}
	return nil, fmt.Errorf("%s %s: the resolver answered %s", dns.TypeToString[qtype], name, dns.RcodeToString[resp.Rcode])
}
