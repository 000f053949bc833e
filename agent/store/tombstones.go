package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// UnknownTombstoneLife is how long a fingerprint stays tombstoned when it is
// deleted without this site holding its certificate (a peer site deleted
// it), so its not-after is unknown: the longest validity a public CA issues.
const UnknownTombstoneLife = 398 * 24 * time.Hour

// UnknownTombstoneRoom is how many live tombstones this site keeps before it
// stops tombstoning certificates it does not hold (a deletion a peer sent
// first, or a peer's tombstone in an inventory): those cost Redis for 398
// days, and a peer could send them for any number of names. Past it, such a
// certificate can still come back from a site that missed the deletion, until
// the next inventory exchange with the site that deleted it (which keeps its
// own tombstone) deletes it here. About 150 bytes each: 15 MB.
const UnknownTombstoneRoom = 100_000

// Tombstone is a certificate deleted or revoked at this site (or at a peer
// site, and so here too): no peer push and no inventory exchange may store
// it again until Until, its not-after.
type Tombstone struct {
	Name        string // the primary name it was held under
	Fingerprint string // SHA-256 of the leaf, lowercase hex
	Until       time.Time
}

func tombstoneMember(fingerprint, name string) string { return fingerprint + ":" + name }

// queueTombstone queues, for one MULTI, the tombstone of fingerprint under
// name until until, and the removal of the tombstones whose certificates
// expired before now (an expired certificate is refused anyway, so they
// guard nothing). With keep, an existing tombstone keeps its time: a guessed
// until must not replace a known not-after.
func (s *Store) queueTombstone(ctx context.Context, p redis.Pipeliner, fingerprint, name string, until, now time.Time, keep bool) {
	z := redis.Z{Score: float64(until.Unix()), Member: tombstoneMember(fingerprint, name)}
	if keep {
		p.ZAddNX(ctx, s.keys.Tombstones(), z)
	} else {
		p.ZAdd(ctx, s.keys.Tombstones(), z)
	}
	p.ZRemRangeByScore(ctx, s.keys.Tombstones(), "-inf", "("+strconv.FormatInt(now.Unix(), 10))
}

// Tombstoned reports whether fingerprint was deleted under any of names. A
// certificate pushed with another primary name than the one it was deleted
// under is still found, through any of its names.
func (s *Store) Tombstoned(ctx context.Context, fingerprint string, names ...string) (bool, error) {
	dead, err := s.tombstoned(ctx, s.rdb, fingerprint, names)
	if err != nil {
		return false, fmt.Errorf("reading the tombstones of %s: %w", fingerprint, err)
	}
	return dead, nil
}

// tombstoned is Tombstoned through c, which may be a transaction that
// WATCHes the tombstones.
func (s *Store) tombstoned(ctx context.Context, c redis.Cmdable, fingerprint string, names []string) (bool, error) {
	if len(names) == 0 {
		return false, nil
	}
	scores, err := c.ZMScore(ctx, s.keys.Tombstones(), tombstoneMembers(fingerprint, names)...).Result()
	if err != nil {
		return false, err
	}
	return anyLive(scores), nil
}

// tombstoneMembers are the members of the tombstones of fingerprint under
// each of names.
func tombstoneMembers(fingerprint string, names []string) []string {
	members := make([]string, len(names))
	for i, n := range names {
		members[i] = tombstoneMember(fingerprint, n)
	}
	return members
}

// anyLive reports whether any of the ZMSCORE scores of tombstones is one:
// a missing member scores 0, and every live tombstone has a not-after.
func anyLive(scores []float64) bool {
	for _, score := range scores {
		if score != 0 {
			return true
		}
	}
	return false
}

// Tombstones lists the tombstones whose certificates are still valid at
// now, soonest expiry first.
func (s *Store) Tombstones(ctx context.Context, now time.Time) ([]Tombstone, error) {
	zs, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: s.keys.Tombstones(), Start: strconv.FormatInt(now.Unix(), 10), Stop: "+inf", ByScore: true,
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the tombstones: %w", err)
	}
	return tombstonesOf(zs), nil
}

// TombstonesPage lists at most limit tombstones whose certificates expire in
// [from, to) (to 0: no end), soonest first, after skipping offset of them;
// more reports whether the range goes on.
func (s *Store) TombstonesPage(ctx context.Context, from, to, offset, limit int64) (out []Tombstone, more bool, err error) {
	stop := "+inf"
	if to != 0 {
		stop = "(" + strconv.FormatInt(to, 10)
	}
	zs, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: s.keys.Tombstones(), Start: strconv.FormatInt(from, 10), Stop: stop, ByScore: true,
		Offset: offset, Count: limit + 1,
	}).Result()
	if err != nil {
		return nil, false, fmt.Errorf("reading the tombstones: %w", err)
	}
	if more = int64(len(zs)) > limit; more {
		zs = zs[:limit]
	}
	return tombstonesOf(zs), more, nil
}

// tombstonesOf decodes the members of the tombstones set with their scores.
func tombstonesOf(zs []redis.Z) []Tombstone {
	out := make([]Tombstone, 0, len(zs))
	for _, z := range zs {
		member, _ := z.Member.(string)
		fingerprint, name, ok := strings.Cut(member, ":")
		if !ok {
			continue // not written by the agent
		}
		out = append(out, Tombstone{Name: name, Fingerprint: fingerprint, Until: time.Unix(int64(z.Score), 0).UTC()})
	}
	return out
}
