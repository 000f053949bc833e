package peer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/internal/backoff"
	"github.com/certagent/certagent/agent/store"
)

// How the Syncer follows the changes stream: each read waits at most
// followBlock (never 0, which would block forever) and takes at most
// followBatch entries; a failing read is retried after a pause growing from
// followRetryMin to followRetryMax. A blocked read is not interrupted when
// its context is cancelled, so followBlock is also how long Shutdown may
// wait for it.
const (
	followBlock    = time.Second
	followBatch    = 100
	followRetryMin = time.Second
	followRetryMax = 30 * time.Second
)

// Syncer keeps the peer sites in step with this one in the background: it
// probes their health, pushes every certificate written or deleted here as
// it happens, and exchanges inventories every sync interval so that what a
// push missed is repaired. One agent per site runs it: the one answering
// the peers.
type Syncer struct {
	f *Fleet

	stop context.CancelFunc
	done chan struct{}
}

// NewSyncer returns a Syncer for f.
func NewSyncer(f *Fleet) *Syncer { return &Syncer{f: f} }

// Start notes where the changes stream ends, so every change from now on is
// pushed, then runs in the background until Shutdown.
func (s *Syncer) Start(ctx context.Context) {
	ctx, s.stop = context.WithCancel(ctx)
	s.done = make(chan struct{})
	after, err := s.f.cfg.Store.LastChangeID(ctx)
	if err != nil {
		// The follower reads it again once Redis answers; changes made
		// meanwhile reach the peers through the inventory exchange.
		s.f.cfg.Logger.Warn("reading where the changes stream ends", "error", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.every(ctx, s.f.cfg.ProbeInterval, s.f.probe) })
	wg.Go(func() { s.follow(ctx, after) })
	wg.Go(func() {
		s.every(ctx, s.f.cfg.SyncInterval, func(ctx context.Context) {
			if err := s.f.SyncNow(ctx); err != nil && ctx.Err() == nil {
				s.f.cfg.Logger.Warn("exchanging inventories with the peer sites", "error", err)
			}
		})
	})
	go func() {
		wg.Wait()
		close(s.done)
	}()
}

// Shutdown stops the Syncer and waits, until ctx ends, for the calls in
// flight to return (each is bounded by the peer timeout, a read of the
// changes stream by followBlock).
func (s *Syncer) Shutdown(ctx context.Context) error {
	if s.stop == nil {
		return nil
	}
	s.stop()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stopping the peer sync: %w", ctx.Err())
	}
}

// every runs fn now and then every interval until ctx ends.
func (s *Syncer) every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// saveStates records the view of the peers for `certagent peers`.
func (f *Fleet) saveStates(ctx context.Context) {
	if err := f.cfg.Store.SetPeerStates(ctx, f.States()); err != nil && ctx.Err() == nil {
		f.cfg.Logger.Warn("recording the state of the peer sites", "error", err)
	}
}

// count adds to the certificates p brought here and took from here, and
// notes an inventory exchange at synced (zero: none).
func (p *peerConn) count(pulled, pushed int64, synced time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state.Pulled += pulled
	p.state.Pushed += pushed
	if !synced.IsZero() {
		p.state.LastSync = synced
	}
}

// probe asks every peer for its health and records what it saw.
func (f *Fleet) probe(ctx context.Context) {
	f.each(ctx, f.peers, func(ctx context.Context, _ int, p *peerConn) error {
		h, err := p.client.Health(ctx)
		if err == nil && h.Site != p.client.ID() {
			err = fmt.Errorf("peer %s answers as site %q: check its URL", p.client.ID(), h.Site)
		}
		return err
	})
	if ctx.Err() == nil {
		f.saveStates(ctx)
	}
}

// follow reads the changes stream after the entry after and pushes each
// change to the peers.
func (s *Syncer) follow(ctx context.Context, after string) {
	st, log := s.f.cfg.Store, s.f.cfg.Logger
	pause := followRetryMin
	var last string // op and fingerprint of the entry handled last
	for ctx.Err() == nil {
		var changes []store.Change
		var err error
		if after == "" {
			after, err = st.LastChangeID(ctx)
		}
		if err == nil {
			changes, err = st.ReadChanges(ctx, after, followBlock, followBatch)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("following the changes stream", "error", err, "retry_in", pause)
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = backoff.Doubling{First: followRetryMin, Most: followRetryMax}.Next(pause)
			continue
		}
		pause = followRetryMin
		for _, c := range changes {
			after = c.ID
			// A write of a certificate with several names adds one entry
			// per name, consecutive in the stream (one MULTI): the first
			// one pushes it.
			key := c.Op + " " + c.Fingerprint
			if key == last {
				continue
			}
			last = key
			s.f.fanOut(ctx, c)
		}
	}
}

// fanOut sends one change to every peer not known to be down; failures are
// logged and left for the inventory exchange.
func (f *Fleet) fanOut(ctx context.Context, c store.Change) {
	log := f.cfg.Logger
	switch c.Op {
	case "put":
		rec, err := f.cfg.Store.GetCert(ctx, c.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			log.Warn("reading a certificate to push to the peer sites", "name", c.Name, "error", err)
		}
		if err != nil || rec.Fingerprint != c.Fingerprint {
			// Deleted or replaced since (a later entry says so), or left
			// for the inventory exchange.
			return
		}
		r := RecordOf(rec)
		f.each(ctx, f.reachable(), func(ctx context.Context, _ int, p *peerConn) error {
			res, err := p.client.PushCert(ctx, rec.Primary(), r)
			switch {
			case err != nil:
				log.Warn("pushing a certificate to a peer site", "name", rec.Primary(), "peer", p.client.ID(), "error", err)
			case res.Stored:
				p.count(0, 1, time.Time{})
			}
			return err
		})
	case "delete":
		if c.Fingerprint == "" {
			// A corrupt record was removed: there is no certificate to name
			// at the peers.
			return
		}
		f.each(ctx, f.reachable(), func(ctx context.Context, _ int, p *peerConn) error {
			_, err := p.client.DeleteCert(ctx, c.Name, c.Fingerprint)
			if err != nil {
				log.Warn("sending a deletion to a peer site", "name", c.Name, "peer", p.client.ID(), "error", err)
			}
			return err
		})
	}
}

// SyncNow exchanges inventories with every peer once (inventory.go): it
// applies each peer's tombstones here, and pulls each certificate a peer
// holds that is missing here or newer than the one held here, unless it was
// deleted here. It records the outcome in the peer state and returns what
// failed.
func (f *Fleet) SyncNow(ctx context.Context) error {
	now := f.cfg.Clock.Now()
	// Each call to a peer inside notes its own outcome: a failure to store
	// here must not mark the peer down.
	errs := parallel(ctx, f.peers, func(ctx context.Context, _ int, p *peerConn) error {
		return f.syncWith(ctx, p, now)
	})
	f.saveStates(ctx)
	return errors.Join(errs...)
}
