package peer

// The lease on a name held at a quorum of sites.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
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
