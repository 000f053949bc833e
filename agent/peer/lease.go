package peer

// The lease on a name held at a quorum of sites.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/store"
)

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

// How sites racing for one name settle it: a site that is refused, and does
// not give way, asks the refusing peers again after a random pause of
// raceRetryMin to raceRetryMax, until raceFor has passed since the first
// round's answers. Long enough for the sites that give way to release what they
// got; short enough that the first visitors still get the certificate
// within a first handshake's wait.
const (
	raceRetryMin = 20 * time.Millisecond
	raceRetryMax = 200 * time.Millisecond
	raceFor      = 1500 * time.Millisecond
)

// ErrGaveWay is returned, with ErrNoQuorum and store.ErrLockHeld, when
// another site that asks for the name at the same time wins it: it got more
// votes, or as many and has the lower site id.
var ErrGaveWay = errors.New("another site is taking the lease")

// leaseRound is what the peers answered to one round of requests.
type leaseRound struct {
	got, refused, failed []*peerConn
	holders              map[string]int // the sites the refusals named, with how many named each
	errs                 []error
}

// Lease asks every peer for the lease on name, for a holder of this site.
// The caller already holds the name's lease in this site's Redis, which
// counts toward the quorum. Sites asking for the same name at the same time
// refuse each other: the one holding the most grants (votes), or as many as
// the best and the lowest site id, asks again after a short random pause,
// while the others give way and release what they got (ErrGaveWay). When
// the sites that granted it still fall short of the quorum, it releases
// what it got and returns an error wrapping ErrNoQuorum that names the
// peers that refused or could not be asked; it also wraps store.ErrLockHeld
// when a refusal named the site that holds the name.
func (f *Fleet) Lease(ctx context.Context, name string) (*Lease, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("leasing %s across sites: %w", name, err)
	}
	l := &Lease{f: f, name: name, holder: f.cfg.Site + "/" + hex.EncodeToString(raw[:]),
		taken: time.Now(), done: make(chan struct{})}
	ask := f.peers
	// The race window runs from the first answers: a first round that
	// waited out the timeout of a peer that is down must not use it up
	// before the sites that give way have released the name.
	var raceStart time.Time
	for {
		r := l.ask(ctx, ask)
		if raceStart.IsZero() {
			raceStart = time.Now()
		}
		l.granted = append(l.granted, r.got...)
		l.unsure = append(l.unsure, r.failed...)
		// A peer that did not answer in time may have granted it all the
		// same: it does not count, but it is released with the others.
		// Below a majority, a refusal is respected: two sites could each
		// reach such a quorum without the other, and the refusing site
		// holds the name for one of them.
		short := len(l.granted)+1 < f.quorum
		if !short && !(f.belowMajority() && len(r.refused) > 0) {
			return l, nil
		}
		yield := l.givesWay(r.holders)
		if yield || len(r.refused) == 0 || time.Since(raceStart) >= raceFor || !sleepRandom(ctx, raceRetryMin, raceRetryMax) {
			return nil, l.shortOfQuorum(ctx, r, short, yield)
		}
		ask = r.refused
	}
}

// ask asks peers for the lease once, all at once.
func (l *Lease) ask(ctx context.Context, peers []*peerConn) leaseRound {
	f := l.f
	granted := make([]bool, len(peers))
	holders := make([]string, len(peers))
	r := leaseRound{holders: map[string]int{}}
	r.errs = f.each(ctx, peers, func(ctx context.Context, i int, p *peerConn) error {
		var err error
		granted[i], holders[i], err = p.client.TakeLeaseOrHolder(ctx, l.name, l.holder, f.cfg.LeaseTTL)
		return err
	})
	for i, p := range peers {
		switch {
		case r.errs[i] != nil:
			r.failed = append(r.failed, p)
		case granted[i]:
			r.got = append(r.got, p)
		default:
			r.refused = append(r.refused, p)
			if holders[i] != "" {
				r.holders[holders[i]]++
			}
		}
	}
	return r
}

// givesWay reports whether another site holding the name wins it over this
// one: more votes than this site's (its own and the grants it holds), or as
// many and a lower site id. Every site racing for the name sees the same
// refusals from the others, so all but one give way.
func (l *Lease) givesWay(holders map[string]int) bool {
	mine, site := len(l.granted)+1, l.f.cfg.Site
	for other, votes := range holders {
		if other != site && (votes > mine || votes == mine && other < site) {
			return true
		}
	}
	return false
}

// shortOfQuorum releases what the lease got and says why it fell short.
func (l *Lease) shortOfQuorum(ctx context.Context, r leaseRound, short, yield bool) error {
	f := l.f
	// The peers that did not answer are released apart: one that is down
	// would otherwise keep this call, and so the caller's own lease on the
	// name, for a whole timeout, past the race window of the site that
	// wins it.
	unsure := l.unsure
	l.unsure = nil
	go func() {
		cctx, cancel := f.cleanupContext(ctx)
		defer cancel()
		l.releaseAt(cctx, unsure)
	}()
	cctx, cancel := f.cleanupContext(ctx)
	defer cancel()
	if err := l.Release(cctx); err != nil {
		f.cfg.Logger.Warn("releasing a lease short of the quorum", "name", l.name, "error", err)
	}
	why := "needed"
	if !short {
		why = "needed, and a site that answers is not overruled below a majority"
	}
	causes := append(r.errs, ErrNoQuorum)
	if len(r.holders) > 0 {
		causes = append(causes, store.ErrLockHeld)
	}
	if yield {
		causes = append(causes, ErrGaveWay)
	}
	return fmt.Errorf("leasing %s across sites: %d of %d sites granted it, %d %s%s: %w",
		l.name, len(l.granted)+1, len(f.peers)+1, f.quorum, why, naming("refused by", r.refused, "not reached", unsure),
		errors.Join(causes...))
}

// sleepRandom waits a random time in [lo, hi), and reports false if ctx
// ended first.
func sleepRandom(ctx context.Context, lo, hi time.Duration) bool {
	t := time.NewTimer(lo + time.Duration(mrand.Int64N(int64(hi-lo))))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
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
	errs := l.releaseAt(ctx, slices.Concat(l.granted, l.unsure))
	return errors.Join(errs[:len(l.granted)]...)
}

// releaseAt gives the lease up at peers, all at once.
func (l *Lease) releaseAt(ctx context.Context, peers []*peerConn) []error {
	return l.f.each(ctx, peers, func(ctx context.Context, _ int, p *peerConn) error {
		return p.client.ReleaseLease(ctx, l.name, l.holder)
	})
}
