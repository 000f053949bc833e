package peer

// A certificate another site already holds, taken instead of an order.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
)

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

// usable reports whether leaf can be taken for the names want instead of an order:
// it covers every name (as in TLS), is valid now with more than a third of its lifetime
// left (otherwise it is due for renewal, and an order is placed anyway), and
// is a newer certificate than have.
func usable(leaf *store.CertRecord, want []string, have *store.CertRecord, now time.Time) bool {
	for _, n := range want {
		if !names.Covers(leaf.Names, n) {
			return false
		}
	}
	if now.Before(leaf.NotBefore) || leaf.NotAfter.Sub(now) <= leaf.NotAfter.Sub(leaf.NotBefore)/3 {
		return false
	}
	return have == nil || store.Supersedes(leaf.Fingerprint, leaf.NotBefore, have.Fingerprint, have.NotBefore)
}
