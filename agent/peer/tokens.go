package peer

// HTTP-01 tokens pushed to every site before the CA validates.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

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
