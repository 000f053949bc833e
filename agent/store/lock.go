package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// LockTTL is the lease of a per-name lock; its holder extends it while the
// order runs, so a crashed agent blocks a name for at most this long.
const LockTTL = 120 * time.Second

// FenceTTL bounds how long the fence counter of a name outlives its last
// lease. A holder paused for longer than this could see the counter start
// again from 1, so it is far longer than any order (order timeout × CAs).
const FenceTTL = 30 * 24 * time.Hour

// ErrLockHeld is returned when another owner holds the lock.
var ErrLockHeld = errors.New("lock held by another agent")

// ErrLockLost is returned when the caller's lease expired or was taken over.
var ErrLockLost = errors.New("lock lost")

// ErrFenced is returned when a write carries a fencing token older than the
// name's current one: another agent took the lease since, and its result must
// not be overwritten by this older one.
var ErrFenced = errors.New("stale fencing token: another agent took the lease since")

var (
	// Taking the lease and drawing the next fencing token happen in one
	// script, so every holder has a token greater than all earlier holders'.
	acquireScript = redis.NewScript(`
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  return 0
end
local fence = redis.call("INCR", KEYS[2])
redis.call("PEXPIRE", KEYS[2], ARGV[3])
return fence`)
	// Only the owner may extend or release: compare the owner id, then act.
	// A lease that is gone (it ran out while Redis was unreachable, or a
	// restart without persistence lost it) is taken back by its owner when
	// nobody drew a fencing token since: the fence still holds the owner's
	// (ARGV[3]), or was lost with the lease and is restored. An ARGV[3] of 0
	// (a holder without a fence) never takes a lease back. A holder whose
	// lease is there but whose fence is not (evicted: it is touched once per
	// order, the lease every few seconds) restores it too: while the lease
	// is held nobody can draw a token, and without it the fenced write fails.
	extendScript = redis.NewScript(`
local holder = redis.call("GET", KEYS[1])
if holder == ARGV[1] then
  if ARGV[3] ~= "0" and redis.call("EXISTS", KEYS[2]) == 0 then
    redis.call("SET", KEYS[2], ARGV[3], "PX", ARGV[4])
  end
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
if holder or ARGV[3] == "0" then
  return 0
end
local fence = redis.call("GET", KEYS[2])
if fence and fence ~= ARGV[3] then
  return 0
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
if not fence then
  redis.call("SET", KEYS[2], ARGV[3], "PX", ARGV[4])
end
return 1`)
	releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`)
)

// Lock is a held lease on one name.
type Lock struct {
	store *Store
	name  string
	owner string
	fence int64
	ttl   time.Duration
	taken time.Time // when the request that took the lease was sent

	// mu is held by an extension and by Release: an extension still in
	// flight when the holder lets go would otherwise take the released
	// lease back for another ttl.
	mu       sync.Mutex
	released bool

	// orderRead is the name's order record as read with the lease (nil once
	// used or outdated by the holder's own write): only the holder writes it.
	orderRead atomic.Pointer[orderRead]
}

// orderRead is a read of a name's order record, decoded.
type orderRead struct {
	rec *OrderRecord
	err error
}

// AcquireLock takes the lease on name for ttl, or returns ErrLockHeld. The
// lease carries a fencing token (Fence) that PutCertFenced checks.
func (s *Store) AcquireLock(ctx context.Context, name string, ttl time.Duration) (*Lock, error) {
	b := s.NewBatch()
	lock := b.AcquireLock(ctx, name, ttl)
	b.Exec(ctx)
	return lock()
}

// AcquireLock queues Store.AcquireLock, and after it the read of the order
// recorded for name, which the lock's first RunningOrder answers from: an
// order needs both, and whoever holds the lease is the only writer of the
// record.
func (b *Batch) AcquireLock(ctx context.Context, name string, ttl time.Duration) func() (*Lock, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return func() (*Lock, error) { return nil, fmt.Errorf("locking %s: %w", name, err) }
	}
	owner := hex.EncodeToString(raw[:])
	taken := time.Now()
	keys, args := b.s.acquireCall(name, owner, ttl)
	acquired := acquireScript.EvalSha(ctx, b.p, keys, args...)
	order := b.p.HGetAll(ctx, b.s.keys.Order(name))
	return func() (*Lock, error) {
		cmd := runQueued(ctx, b.s, acquireScript, acquired, keys, args...)
		fence, err := acquiredFence(name, cmd)
		if err != nil {
			return nil, err
		}
		l := &Lock{store: b.s, name: name, owner: owner, fence: fence, ttl: ttl, taken: taken}
		if cmd == acquired {
			// Read after the lease was taken (not so when the script had
			// to be run again on its own).
			rec, err := orderFromFields(name, order.Val(), order.Err())
			l.orderRead.Store(&orderRead{rec: rec, err: err})
		}
		return l, nil
	}
}

// acquiredFence reads the answer of acquireScript: the lease's fencing token,
// or an error wrapping ErrLockHeld.
func acquiredFence(name string, cmd *redis.Cmd) (int64, error) {
	fence, err := cmd.Int64()
	if err != nil {
		return 0, fmt.Errorf("locking %s: %w", name, err)
	}
	if fence == 0 {
		return 0, fmt.Errorf("locking %s: %w", name, ErrLockHeld)
	}
	return fence, nil
}

// acquire takes the lease on name for owner and draws the next fencing
// token, or returns an error wrapping ErrLockHeld.
func (s *Store) acquire(ctx context.Context, name, owner string, ttl time.Duration) (int64, error) {
	keys, args := s.acquireCall(name, owner, ttl)
	return acquiredFence(name, acquireScript.Run(ctx, s.rdb, keys, args...))
}

// acquireCall is the KEYS and ARGV of acquireScript: owner's lease on name
// for ttl, with the next fencing token.
func (s *Store) acquireCall(name, owner string, ttl time.Duration) ([]string, []any) {
	return []string{s.keys.Lock(name), s.keys.Fence(name)}, []any{owner, ttl.Milliseconds(), FenceTTL.Milliseconds()}
}

// extend renews owner's lease on name for ttl, or returns an error wrapping
// ErrLockLost. With a fence (non-zero), a lease that is gone is taken back
// when that fence is still the name's latest.
func (s *Store) extend(ctx context.Context, name, owner string, fence int64, ttl time.Duration) error {
	n, err := extendScript.Run(ctx, s.rdb, []string{s.keys.Lock(name), s.keys.Fence(name)},
		owner, ttl.Milliseconds(), fence, FenceTTL.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("extending the lock on %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("extending the lock on %s: %w", name, ErrLockLost)
	}
	return nil
}

// release deletes the lease on name if owner holds it.
func (s *Store) release(ctx context.Context, name, owner string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{s.keys.Lock(name)}, owner).Err(); err != nil {
		return fmt.Errorf("releasing the lock on %s: %w", name, err)
	}
	return nil
}

// Fence returns the fencing token drawn when the lease was taken.
func (l *Lock) Fence() int64 { return l.fence }

// Extend renews the lease for another ttl, or returns ErrLockLost. A lease
// that ran out or that Redis lost is taken back when no other agent took the
// name since.
func (l *Lock) Extend(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return fmt.Errorf("extending the lock on %s: released: %w", l.name, ErrLockLost)
	}
	return l.store.extend(ctx, l.name, l.owner, l.fence, l.ttl)
}

// Release gives the lease up if the caller still holds it. It waits for an
// extension in flight, and no extension follows it.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.released = true
	return l.store.release(ctx, l.name, l.owner)
}

// ReleaseSoon is Release for a holder that is done with the name: when
// Redis cannot take the release now (down, restarting, out of memory), it is
// tried again in the background every second until Redis answers or the
// lease has run out anyway. Otherwise the name would stay leased, to nobody,
// for the rest of the lease after a short Redis outage: its order, taken up
// again within seconds, would wait for it (minutes). done is called once
// the lease is released or run out (at once, or from the background). The
// error is the first attempt's.
func (l *Lock) ReleaseSoon(ctx context.Context, done func()) error {
	err := l.Release(ctx)
	if err == nil || !Unavailable(err) {
		done()
		return err
	}
	until := time.Now().Add(l.ttl)
	go func() {
		defer done()
		for time.Now().Before(until) {
			time.Sleep(time.Second)
			attempt, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := l.Release(attempt)
			cancel()
			if err == nil || !Unavailable(err) {
				return
			}
		}
	}()
	return err
}

// PutCert stores rec like Store.PutCert, but only while no later lease has
// been taken on the lock's name; otherwise it writes nothing and returns an
// error wrapping ErrFenced. The lease itself may have expired: what counts is
// that nobody drew a newer token, so no newer result can be overwritten.
// The order recorded for the name (RecordOrder) is deleted in the same
// transaction: it is done, and must not hand its certificate out again.
func (l *Lock) PutCert(ctx context.Context, rec *CertRecord) error {
	return l.store.putCert(ctx, rec, l)
}

// KeepAlive extends the lease every ttl/3 until ctx ends. An extension that
// fails because Redis does not answer (a restart, a failover) is retried
// until the lease has run out by the holder's own clock: the order goes on
// through a short outage. KeepAlive calls lost once, so the holder can abandon
// its work, when the lease has run out unextended or when Redis answers that
// another agent has it.
func (l *Lock) KeepAlive(ctx context.Context, lost func(error)) {
	// The lease runs from before the request that took or extended it.
	heldUntil := l.taken.Add(l.ttl)
	KeepLeaseAlive(ctx, l.ttl, heldUntil, func(ctx context.Context) (time.Time, error) {
		sent := time.Now()
		if err := l.Extend(ctx); err != nil {
			return heldUntil, err
		}
		heldUntil = sent.Add(l.ttl)
		return heldUntil, nil
	}, func(err error) bool { return errors.Is(err, ErrLockLost) }, lost)
}

// KeepLeaseAlive keeps a lease of ttl, held until heldUntil, by calling
// renew every ttl/3 until ctx ends. renew extends the lease within the
// context it is given (whose deadline is when the lease runs out) and
// returns when the lease now runs out, by the holder's clock and counted
// from before its requests were sent, and an error when the extension fell
// short; that time is taken even with an error. A failed extension is tried
// again after a short pause until the lease has run out, or at once given
// up when final(err) says no retry can keep it (another holder has it):
// KeepLeaseAlive then calls lost once and returns.
func KeepLeaseAlive(ctx context.Context, ttl time.Duration, heldUntil time.Time,
	renew func(context.Context) (time.Time, error), final func(error) bool, lost func(error)) {
	timer := time.NewTimer(ttl / 3)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		attempt, cancel := context.WithDeadline(ctx, heldUntil)
		until, err := renew(attempt)
		cancel()
		heldUntil = until
		switch {
		case err == nil:
			timer.Reset(ttl / 3)
		case ctx.Err() != nil:
			return
		case final(err) || !time.Now().Before(heldUntil):
			lost(err)
			return
		default:
			timer.Reset(min(extendRetryPause(ttl), time.Until(heldUntil)))
		}
	}
}

// extendRetryPause is the pause between extensions that failed: short
// against the lease (a 120 s lease is tried again every 2 s), so the first
// answer of a Redis that is back renews it.
func extendRetryPause(ttl time.Duration) time.Duration {
	return min(max(ttl/60, 50*time.Millisecond), 2*time.Second)
}
