package store

import (
	"context"
	"fmt"
	"time"
)

// PeerNonceTTL is how long a nonce a peer site signed a request with is
// remembered: longer than a signed timestamp is accepted either way, so a
// replay is refused as a replay until it is refused as stale.
const PeerNonceTTL = 600 * time.Second

// SeenNonce records that site signed a request with nonce and reports
// whether that is the first time (fresh); a request whose nonce is not fresh
// is a replay. One SET NX decides, so of two requests with one nonce exactly
// one is fresh, whichever agent of the site answers it.
func (s *Store) SeenNonce(ctx context.Context, site, nonce string) (fresh bool, err error) {
	fresh, err = s.rdb.SetNX(ctx, s.keys.PeerNonce(site, nonce), "1", PeerNonceTTL).Result()
	if err != nil {
		return false, fmt.Errorf("recording the nonce of a request from %s: %w", site, err)
	}
	return fresh, nil
}
