package peer

// The Fleet: this site's view of the peer sites, and the fan-out of one
// call to all of them.

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

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
	// singlePulls is set once the peer answered that it only serves one
	// record a request (an older agent).
	singlePulls atomic.Bool

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
