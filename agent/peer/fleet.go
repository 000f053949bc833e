package peer

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
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

// Fleet is this site's view of the other sites: it pushes tokens to them,
// takes leases and certificates from them, and keeps their state.
type Fleet struct {
	cfg    Config
	quorum int
	peers  []*peerConn
}

// peerConn is one peer: its client and what the calls to it showed.
type peerConn struct {
	client *Client

	mu    sync.Mutex
	state PeerState
}

// Clients returns the clients of the peer sites, in the configured order.
func (f *Fleet) Clients() []*Client {
	clients := make([]*Client, len(f.peers))
	for i, p := range f.peers {
		clients[i] = p.client
	}
	return clients
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

// States returns this agent's view of every peer, in configuration order.
func (f *Fleet) States() []PeerState {
	out := make([]PeerState, len(f.peers))
	for i, p := range f.peers {
		p.mu.Lock()
		out[i] = p.state
		p.mu.Unlock()
	}
	return out
}

// answered reports whether err still shows a peer that works: a refusal
// the protocol expects (no such record, leased elsewhere, a record it finds
// invalid) is an answer, not a failure.
func answered(err error) bool {
	switch statusOf(err) {
	case http.StatusNotFound, http.StatusConflict, http.StatusUnprocessableEntity:
		return true
	}
	return err == nil
}

// note records the outcome of a call to p made with ctx, and logs when p
// goes down or comes back. A call the caller gave up on says nothing about
// the peer.
func (f *Fleet) note(ctx context.Context, p *peerConn, err error) {
	if err != nil && ctx.Err() != nil {
		return
	}
	now := f.cfg.Clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	wasUp, known := p.state.Up, !p.state.LastOK.IsZero() || !p.state.LastErrorAt.IsZero()
	if answered(err) {
		p.state.Up, p.state.LastOK = true, now
		if known && !wasUp {
			f.cfg.Logger.Info("peer site reachable again", "peer", p.client.ID())
		}
		return
	}
	p.state.Up, p.state.LastError, p.state.LastErrorAt = false, err.Error(), now
	if wasUp || !known {
		f.cfg.Logger.Warn("peer site unreachable", "peer", p.client.ID(), "error", err)
	}
}

// knownDown reports whether the last call to p failed. Calls that only save
// time (not correctness) skip such peers until a probe finds them again.
func (p *peerConn) knownDown() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.state.Up && !p.state.LastErrorAt.IsZero()
}

// each calls fn, one call to a peer, for every peer of peers at once and
// returns the errors in the same order, noting each outcome. Every call is
// bounded by the client's timeout, so each returns within it.
func (f *Fleet) each(ctx context.Context, peers []*peerConn, fn func(ctx context.Context, i int, p *peerConn) error) []error {
	return parallel(ctx, peers, func(ctx context.Context, i int, p *peerConn) error {
		err := fn(ctx, i, p)
		f.note(ctx, p, err)
		return err
	})
}

// parallel calls fn for every peer of peers at once and returns the errors
// in the same order.
func parallel(ctx context.Context, peers []*peerConn, fn func(ctx context.Context, i int, p *peerConn) error) []error {
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() { errs[i] = fn(ctx, i, p) })
	}
	wg.Wait()
	return errs
}

// reachable returns the peers not known to be down.
func (f *Fleet) reachable() []*peerConn {
	var out []*peerConn
	for _, p := range f.peers {
		if !p.knownDown() {
			out = append(out, p)
		}
	}
	return out
}

// naming lists the peers of two groups for an error message, as
// "; refused by: b; not reached: c", leaving out an empty group.
func naming(label1 string, group1 []*peerConn, label2 string, group2 []*peerConn) string {
	var out string
	if len(group1) > 0 {
		out += "; " + label1 + ": " + ids(group1)
	}
	if len(group2) > 0 {
		out += "; " + label2 + ": " + ids(group2)
	}
	return out
}

func ids(peers []*peerConn) string {
	names := make([]string, len(peers))
	for i, p := range peers {
		names[i] = p.client.ID()
	}
	return strings.Join(names, ", ")
}

// cleanupContext outlives a cancelled ctx for as long as a call to a peer
// may take: what was granted or pushed must be withdrawn even when the
// caller gave up.
func (f *Fleet) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), f.cfg.Timeout)
}

// pushContext is ctx without its deadline: the CA client bounds a token's
// publication more tightly than the peer timeout that bounds each push
// (--peer-timeout), which would otherwise be cut short. It is still
// cancelled when ctx is, by the caller giving up.
func pushContext(ctx context.Context) (context.Context, context.CancelFunc) {
	pctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stopAfter := context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.Canceled) {
			cancel(context.Cause(ctx))
		}
	})
	return pctx, func() {
		stopAfter()
		cancel(nil)
	}
}

// Tokens returns a token store that writes to local and to every peer
// before the CA validates, by the token rule.
func (f *Fleet) Tokens(local acmeclient.TokenStore) acmeclient.TokenStore {
	return &fleetTokens{f: f, local: local}
}

type fleetTokens struct {
	f     *Fleet
	local acmeclient.TokenStore
}

// PutToken writes the token here, then to every peer at once. It succeeds
// when the sites holding it meet the token rule; otherwise it withdraws the
// token everywhere it went and returns an error naming the peers without it.
func (t *fleetTokens) PutToken(ctx context.Context, name, token, keyAuth string) error {
	f := t.f
	if err := t.local.PutToken(ctx, name, token, keyAuth); err != nil {
		return err
	}
	pctx, stop := pushContext(ctx)
	errs := f.each(pctx, f.peers, func(ctx context.Context, _ int, p *peerConn) error {
		return p.client.PutToken(ctx, name, token, keyAuth, store.TokenTTL)
	})
	stop()
	var held, missed []*peerConn
	for i, p := range f.peers {
		if errs[i] == nil {
			held = append(held, p)
		} else {
			missed = append(missed, p)
		}
	}
	sites, holding := len(f.peers)+1, len(held)+1
	need := sites/2 + 1
	if f.cfg.TokenRule == TokenRuleAll {
		need = sites
	}
	if holding >= need {
		if len(missed) > 0 {
			f.cfg.Logger.Warn("the HTTP-01 token did not reach every peer site; validation goes ahead",
				"name", name, "unreachable", ids(missed), "holding", holding, "sites", sites, "error", errors.Join(errs...))
		}
		return nil
	}
	cctx, cancel := f.cleanupContext(ctx)
	defer cancel()
	if err := t.local.DeleteToken(cctx, name, token); err != nil {
		f.cfg.Logger.Warn("withdrawing the HTTP-01 token", "name", name, "error", err)
	}
	f.each(cctx, held, func(ctx context.Context, _ int, p *peerConn) error {
		err := p.client.DeleteToken(ctx, name, token)
		if err != nil {
			f.cfg.Logger.Warn("withdrawing the HTTP-01 token", "name", name, "peer", p.client.ID(), "error", err)
		}
		return err
	})
	return fmt.Errorf("pushing the HTTP-01 token for %s to the peer sites: %d of %d sites hold it, the %s rule needs %d; not reached: %s: %w",
		name, holding, sites, f.cfg.TokenRule, need, ids(missed), errors.Join(errs...))
}

// Token reads the token here: the order confirms it in this site's store,
// which the peers' pushes do not change.
func (t *fleetTokens) Token(ctx context.Context, name, token string) (string, error) {
	return t.local.Token(ctx, name, token)
}

// RestartedSince asks this site's store, the one the order confirms in.
func (t *fleetTokens) RestartedSince(ctx context.Context, since time.Time) (bool, error) {
	return t.local.RestartedSince(ctx, since)
}

// DeleteToken removes the token here and at every peer not known down, best
// effort at the peers: tokens expire after store.TokenTTL anyway, and the
// order waits for this after every authorization.
func (t *fleetTokens) DeleteToken(ctx context.Context, name, token string) error {
	err := t.local.DeleteToken(ctx, name, token)
	t.f.each(ctx, t.f.reachable(), func(ctx context.Context, _ int, p *peerConn) error {
		err := p.client.DeleteToken(ctx, name, token)
		if err != nil {
			t.f.cfg.Logger.Debug("removing the HTTP-01 token at a peer site", "name", name, "peer", p.client.ID(), "error", err)
		}
		return err
	})
	return err
}

// Existing asks the reachable peers for a certificate for names (under the
// first, the primary name) and stores here the newest one that is valid for
// all of them, not due for renewal (more than a third of its lifetime left)
// and, when have is not nil, a different certificate issued after have. It
// returns the stored record, or nil when no peer has one, with an error
// naming the peers that could not be asked (peers known down are not,
// unless all are).
func (f *Fleet) Existing(ctx context.Context, names []string, have *store.CertRecord) (*store.CertRecord, error) {
	if len(names) == 0 {
		return nil, errors.New("asking the peer sites for a certificate: no names")
	}
	primary := names[0]
	asked := f.reachable()
	if len(asked) == 0 {
		// Every peer failed its last call: often this site's own outage,
		// over before the next probe. A certificate issued elsewhere
		// meanwhile is only at the peers, which would grant the lease for
		// a second order: ask them all.
		asked = f.peers
	}
	got := make([]*Record, len(asked))
	errs := f.each(ctx, asked, func(ctx context.Context, i int, p *peerConn) error {
		var err error
		got[i], err = p.client.GetCert(ctx, primary)
		return err
	})
	now := f.cfg.Clock.Now()
	type candidate struct {
		from string
		rec  Record
		leaf *store.CertRecord
	}
	var found []candidate
	for i, r := range got {
		if r == nil {
			continue
		}
		leaf, err := store.NewCertRecord([]byte(r.FullChain), []byte(r.Key), "")
		if err != nil {
			f.cfg.Logger.Warn("a peer site's certificate does not parse", "name", primary, "peer", asked[i].client.ID(), "error", err)
			continue
		}
		if leaf.Names, err = storedNames(leaf.Names); err != nil {
			continue // Accept would refuse it too
		}
		if usable(leaf, names, have, now) {
			found = append(found, candidate{from: asked[i].client.ID(), rec: *r, leaf: leaf})
		}
	}
	slices.SortFunc(found, func(a, b candidate) int { return b.leaf.NotBefore.Compare(a.leaf.NotBefore) })
	for _, c := range found {
		res, err := Accept(ctx, f.cfg.Store, primary, c.rec, now)
		if err != nil {
			f.cfg.Logger.Warn("refused a peer site's certificate", "name", primary, "peer", c.from, "error", err)
			continue
		}
		if !res.Stored && res.Reason != store.ReasonSame {
			continue
		}
		rec, err := f.cfg.Store.GetCert(ctx, primary)
		if err != nil {
			return nil, fmt.Errorf("reading the certificate for %s taken from %s: %w", primary, c.from, err)
		}
		return rec, nil
	}
	var failed []error
	for _, err := range errs {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			failed = append(failed, err)
		}
	}
	return nil, errors.Join(failed...)
}

// usable reports whether leaf can be taken for names instead of an order:
// it covers every name (as in TLS), is valid now with more than a third of its lifetime
// left (otherwise it is due for renewal, and an order is placed anyway), and
// is a newer certificate than have.
func usable(leaf *store.CertRecord, names []string, have *store.CertRecord, now time.Time) bool {
	for _, n := range names {
		if !covers(leaf.Names, n) {
			return false
		}
	}
	if now.Before(leaf.NotBefore) || leaf.NotAfter.Sub(now) <= leaf.NotAfter.Sub(leaf.NotBefore)/3 {
		return false
	}
	return have == nil || (leaf.Fingerprint != have.Fingerprint && leaf.NotBefore.After(have.NotBefore))
}

// Lease is a name's lease held at a quorum of sites: this one (held by the
// caller in its own Redis) and the peers that granted it.
type Lease struct {
	f       *Fleet
	name    string
	holder  string
	granted []*peerConn
	// unsure are the peers that did not answer in time: they may have
	// granted it, so Release goes to them too, best effort.
	unsure []*peerConn

	// taken is when the request that took the lease was sent: each peer's
	// grant runs from before it, by this site's clock.
	taken time.Time
	done  chan struct{}
	once  sync.Once
}

// Lease asks every peer for the lease on name, for a holder of this site.
// The caller already holds the name's lease in this site's Redis, which
// counts toward the quorum. When the sites that granted it fall short of
// the quorum, it releases what it got and returns an error wrapping
// ErrNoQuorum that names the peers that refused or could not be asked.
func (f *Fleet) Lease(ctx context.Context, name string) (*Lease, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("leasing %s across sites: %w", name, err)
	}
	holder := f.cfg.Site + "/" + hex.EncodeToString(raw[:])
	taken := time.Now()
	granted := make([]bool, len(f.peers))
	errs := f.each(ctx, f.peers, func(ctx context.Context, i int, p *peerConn) error {
		var err error
		granted[i], err = p.client.TakeLease(ctx, name, holder, f.cfg.LeaseTTL)
		return err
	})
	var got, refused, failed []*peerConn
	for i, p := range f.peers {
		switch {
		case errs[i] != nil:
			failed = append(failed, p)
		case granted[i]:
			got = append(got, p)
		default:
			refused = append(refused, p)
		}
	}
	// A peer that did not answer in time may have granted it all the same:
	// it does not count, but it is released with the others. Below a
	// majority, a refusal is respected: two sites could each reach such a
	// quorum without the other, and the refusing site holds the name for
	// one of them.
	short := len(got)+1 < f.quorum
	if !short && !(f.belowMajority() && len(refused) > 0) {
		return &Lease{f: f, name: name, holder: holder, granted: got, unsure: failed, taken: taken,
			done: make(chan struct{})}, nil
	}
	l := &Lease{f: f, name: name, holder: holder, granted: got, unsure: failed, done: make(chan struct{})}
	cctx, cancel := f.cleanupContext(ctx)
	defer cancel()
	if err := l.Release(cctx); err != nil {
		f.cfg.Logger.Warn("releasing a lease short of the quorum", "name", name, "error", err)
	}
	why := "needed"
	if !short {
		why = "needed, and a site that answers is not overruled below a majority"
	}
	return nil, fmt.Errorf("leasing %s across sites: %d of %d sites granted it, %d %s%s: %w",
		name, len(got)+1, len(f.peers)+1, f.quorum, why, naming("refused by", refused, "not reached", failed),
		errors.Join(append(errs, ErrNoQuorum)...))
}

// belowMajority reports whether the quorum is half the sites or fewer: two
// sites' quorums then need not share a site.
func (f *Fleet) belowMajority() bool { return 2*f.quorum <= len(f.peers)+1 }

// Holder returns the holder id the lease was taken for, "<site>/<random>".
func (l *Lease) Holder() string { return l.holder }

// errLeasedElsewhere ends a lease kept below a majority at once: a peer
// answered that it no longer holds the lease for this holder.
var errLeasedElsewhere = errors.New("a peer site no longer holds it for this holder")

// KeepAlive extends the lease on the peers that hold it every third of the
// lease TTL until ctx ends or Release is called. A round that falls short of
// the quorum (a peer down for a moment, a slow answer) is tried again after
// a short pause, like the local lock's (store.KeepLeaseAlive), until the
// lease the quorum granted has run out by this site's clock: each peer's
// grant runs from before the request that took or last extended it. lost
// is called once, and KeepAlive returns, when fewer sites than the quorum
// (this one included) still hold it by then, at once when the peers that
// answered they no longer hold it leave too few, and below a majority at
// once when any peer answers so.
func (l *Lease) KeepAlive(ctx context.Context, lost func(error)) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-l.done:
			stop()
		case <-ctx.Done():
		}
	}()
	// Each peer's grant, by this site's clock.
	ttl := l.f.cfg.LeaseTTL
	heldUntil := make(map[*peerConn]time.Time, len(l.granted))
	for _, p := range l.granted {
		heldUntil[p] = l.taken.Add(ttl)
	}
	store.KeepLeaseAlive(ctx, ttl, l.quorumUntil(heldUntil, l.taken.Add(ttl)),
		func(ctx context.Context) (time.Time, error) { return l.extend(ctx, heldUntil) },
		func(err error) bool { return errors.Is(err, errLeasedElsewhere) },
		func(err error) {
			if l.isHeld() {
				lost(err)
			}
		})
}

// extend asks every peer in heldUntil to extend the lease, moves the
// grants of those that did, drops those that answered they no longer hold
// it, and returns until when the quorum holds it. The error says which
// sites fell short when fewer than the quorum confirmed this round.
func (l *Lease) extend(ctx context.Context, heldUntil map[*peerConn]time.Time) (time.Time, error) {
	f := l.f
	var holding []*peerConn
	for _, p := range l.granted {
		if _, ok := heldUntil[p]; ok {
			holding = append(holding, p)
		}
	}
	sent := time.Now()
	kept := make([]bool, len(holding))
	errs := f.each(ctx, holding, func(ctx context.Context, i int, p *peerConn) error {
		var err error
		kept[i], err = p.client.ExtendLease(ctx, l.name, l.holder, f.cfg.LeaseTTL)
		return err
	})
	var gone, unsure []*peerConn
	confirmed := 1
	for i, p := range holding {
		switch {
		case kept[i]:
			heldUntil[p] = sent.Add(f.cfg.LeaseTTL)
			confirmed++
		case errs[i] != nil:
			// It may hold it still, until its last grant runs out: ask
			// again, but do not count it now.
			unsure = append(unsure, p)
		default:
			delete(heldUntil, p)
			gone = append(gone, p)
		}
	}
	until := l.quorumUntil(heldUntil, sent.Add(f.cfg.LeaseTTL))
	// Below a majority, a peer that lost it to another holder ends the
	// lease as a refusal would have refused it.
	elsewhere := f.belowMajority() && len(gone) > 0
	if confirmed >= f.quorum && !elsewhere {
		return until, nil
	}
	causes := append(errs, ErrNoQuorum)
	if elsewhere {
		causes = append(causes, errLeasedElsewhere)
	}
	return until, fmt.Errorf("extending the lease on %s across sites: %d of %d sites confirm it, %d needed%s: %w",
		l.name, confirmed, len(f.peers)+1, f.quorum, naming("lost at", gone, "not reached", unsure),
		errors.Join(causes...))
}

// quorumUntil returns until when the quorum still holds the lease: this
// site, whose own lease is kept apart (until here), and the peers whose
// grants run out last. Too few peers left: the zero time, it has run out.
func (l *Lease) quorumUntil(heldUntil map[*peerConn]time.Time, here time.Time) time.Time {
	need := l.f.quorum - 1
	if need == 0 {
		return here
	}
	untils := slices.Collect(maps.Values(heldUntil))
	if len(untils) < need {
		return time.Time{}
	}
	slices.SortFunc(untils, func(a, b time.Time) int { return b.Compare(a) })
	return untils[need-1]
}

// isHeld reports whether Release has not been called.
func (l *Lease) isHeld() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// Release gives the lease up at every peer that granted it, and at those
// that may have (their errors are not returned: most never got the request),
// and stops KeepAlive.
func (l *Lease) Release(ctx context.Context) error {
	l.once.Do(func() { close(l.done) })
	errs := l.f.each(ctx, slices.Concat(l.granted, l.unsure), func(ctx context.Context, _ int, p *peerConn) error {
		return p.client.ReleaseLease(ctx, l.name, l.holder)
	})
	return errors.Join(errs[:len(l.granted)]...)
}
