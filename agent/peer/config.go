package peer

// The configuration of a Fleet: its peers, rules and timings.

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/store"
)

// Token rules: which share of the sites, this one included, must hold an
// HTTP-01 token before the CA is asked to validate.
const (
	TokenRuleMajority = "majority"
	TokenRuleAll      = "all"
)

// Defaults of Config.
const (
	DefaultSyncInterval  = 60 * time.Second
	DefaultProbeInterval = 10 * time.Second
	DefaultLeaseTTL      = store.LockTTL
)

// ErrNoQuorum is returned when too few sites grant or keep a lease.
var ErrNoQuorum = errors.New("too few sites hold the lease")

// PeerConfig is one peer site.
type PeerConfig struct {
	ID  string // the peer's site id
	URL string // https://host:port of its peer API
}

// PeerState is this agent's view of one peer site.
type PeerState = store.PeerState

// Config configures a Fleet.
type Config struct {
	// Site is this site's id. Required.
	Site string
	// Secret is the fleet's shared secret, at least MinSecretLen bytes. Required.
	Secret []byte
	// Peers are the other sites. At least one is required.
	Peers []PeerConfig
	// RootCAs are trusted for the peers' certificates. Default: the system roots.
	RootCAs *x509.CertPool
	// Timeout bounds each call to a peer. Default: DefaultTimeout (5 s).
	Timeout time.Duration
	// TokenRule is TokenRuleMajority or TokenRuleAll. Default: majority.
	TokenRule string
	// Quorum is how many sites, this one included, must grant a lease.
	// Default: a majority of len(Peers)+1.
	Quorum int
	// SyncInterval is the period of the inventory exchange. Default: 60 s.
	SyncInterval time.Duration
	// ProbeInterval is the period of the health probes. Default: 10 s.
	ProbeInterval time.Duration
	// LeaseTTL is the lease asked of the peers, 3 s to MaxLeaseTTL; it is
	// extended every third of it while the order runs. Default:
	// store.LockTTL (120 s).
	LeaseTTL time.Duration
	// Store is this site's Redis. Required.
	Store *store.Store
	// Logger receives what happens with the peers. Default: slog.Default().
	Logger *slog.Logger
	// Clock. Default: the system clock.
	Clock clock.Clock
	// Agent names this agent in the peer state it records. Default: the
	// host name.
	Agent string
}

// NewFleet checks cfg and returns the fleet it describes.
func NewFleet(cfg Config) (*Fleet, error) {
	if cfg.Store == nil {
		return nil, errors.New("peer sites: no store")
	}
	signer, err := NewSigner(cfg.Site, cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("peer sites: %w", err)
	}
	if len(cfg.Peers) == 0 {
		return nil, errors.New("peer sites: none configured")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	switch cfg.TokenRule {
	case "":
		cfg.TokenRule = TokenRuleMajority
	case TokenRuleMajority, TokenRuleAll:
	default:
		return nil, fmt.Errorf("peer sites: token rule %q: want %s or %s", cfg.TokenRule, TokenRuleMajority, TokenRuleAll)
	}
	sites := len(cfg.Peers) + 1
	if cfg.Quorum == 0 {
		cfg.Quorum = sites/2 + 1
	}
	if cfg.Quorum < 1 || cfg.Quorum > sites {
		return nil, fmt.Errorf("peer sites: quorum %d: want 1 to %d (the sites, this one included)", cfg.Quorum, sites)
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	// Peers count leases in whole seconds and cap them at MaxLeaseTTL: a
	// longer one would expire there between two extensions.
	if cfg.LeaseTTL < 3*time.Second || cfg.LeaseTTL > MaxLeaseTTL {
		return nil, fmt.Errorf("peer sites: lease TTL %s: want 3s to %s", cfg.LeaseTTL, MaxLeaseTTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Agent == "" {
		cfg.Agent, _ = os.Hostname()
	}
	hc := newHTTPClient(cfg.RootCAs)
	f := &Fleet{cfg: cfg, quorum: cfg.Quorum}
	seen := map[string]bool{cfg.Site: true}
	for _, p := range cfg.Peers {
		if p.ID == cfg.Site {
			return nil, fmt.Errorf("peer sites: %s is this site", p.ID)
		}
		if seen[p.ID] {
			return nil, fmt.Errorf("peer sites: %s is configured twice", p.ID)
		}
		seen[p.ID] = true
		c, err := NewClient(ClientConfig{ID: p.ID, URL: p.URL, Signer: signer, HTTPClient: hc,
			Timeout: cfg.Timeout, Clock: cfg.Clock})
		if err != nil {
			return nil, fmt.Errorf("peer sites: %w", err)
		}
		f.peers = append(f.peers, &peerConn{client: c, state: PeerState{ID: p.ID, URL: c.URL(), Agent: cfg.Agent}})
	}
	return f, nil
}

// ParsePeers reads peer sites written as "id=https://host:port". Empty
// entries are skipped (a trailing comma in the environment).
func ParsePeers(specs []string) ([]PeerConfig, error) {
	var out []PeerConfig
	for _, spec := range specs {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		id, u, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("peer %q: want id=https://host:port", spec)
		}
		id, u = strings.TrimSpace(id), strings.TrimSpace(u)
		if err := CheckSiteID(id); err != nil {
			return nil, fmt.Errorf("peer %q: %w", spec, err)
		}
		if err := checkPeerURL(u); err != nil {
			return nil, fmt.Errorf("peer %q: %w", spec, err)
		}
		out = append(out, PeerConfig{ID: id, URL: u})
	}
	return out, nil
}

// ReadPeersFile reads a file of "id=url" lines; '#' starts a comment.
func ReadPeersFile(path string) ([]PeerConfig, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the peers file: %w", err)
	}
	defer file.Close()
	var out []PeerConfig
	sc := bufio.NewScanner(file)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		peers, err := ParsePeers([]string{text})
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		out = append(out, peers...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the peers file: %w", err)
	}
	return out, nil
}
