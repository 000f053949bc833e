package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// KeepLeaseAlive's schedule, on simulated time (testing/synctest): the
// Redis round trips are a function here, so the bubble holds everything and
// the test neither sleeps nor depends on the machine's load. The tests with
// Redis (lock_test.go, store_test.go) check the extension itself.

// keepAliveRun records when renew was called and what lost got.
type keepAliveRun struct {
	mu    sync.Mutex
	calls []time.Duration // since the start
	lost  []error
}

func (k *keepAliveRun) call(since time.Time) {
	k.mu.Lock()
	k.calls = append(k.calls, time.Since(since))
	k.mu.Unlock()
}

func TestKeepLeaseAliveRenewsEveryThirdOfTheTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 30 * time.Second
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		var run keepAliveRun
		done := make(chan struct{})
		go func() {
			defer close(done)
			KeepLeaseAlive(ctx, ttl, start.Add(ttl), func(context.Context) (time.Time, error) {
				run.call(start)
				return time.Now().Add(ttl), nil
			}, func(error) bool { return false }, func(err error) { run.lost = append(run.lost, err) })
		}()
		time.Sleep(95 * time.Second)
		cancel()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("KeepLeaseAlive still runs after its context ended")
		}
		if len(run.calls) != 9 {
			t.Fatalf("%d renewals in 95 s, want 9 (every 10 s): %v", len(run.calls), run.calls)
		}
		for i, at := range run.calls {
			if want := time.Duration(i+1) * ttl / 3; at != want {
				t.Errorf("renewal %d at %s, want %s", i+1, at, want)
			}
		}
		if len(run.lost) != 0 {
			t.Errorf("lost called for a lease that was kept: %v", run.lost)
		}
	})
}

func TestKeepLeaseAliveRetriesUntilTheLeaseRunsOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 30 * time.Second
		start := time.Now()
		down := errors.New("redis: connection refused")
		var run keepAliveRun
		done := make(chan struct{})
		go func() {
			defer close(done)
			KeepLeaseAlive(context.Background(), ttl, start.Add(ttl), func(ctx context.Context) (time.Time, error) {
				run.call(start)
				if deadline, ok := ctx.Deadline(); !ok || !deadline.Equal(start.Add(ttl)) {
					t.Errorf("an extension's deadline is %v, want when the lease runs out", deadline)
				}
				return start.Add(ttl), down // nothing extended: still held until then
			}, func(error) bool { return false }, func(err error) { run.lost = append(run.lost, err) })
		}()
		<-done
		// The first try at 10 s, then every extendRetryPause (500 ms for
		// 30 s) up to the end of the lease at 30 s: 41 tries; lost once,
		// at the end, with the last error.
		if len(run.calls) != 41 || run.calls[0] != 10*time.Second || run.calls[1] != 10*time.Second+500*time.Millisecond ||
			run.calls[40] != ttl {
			t.Errorf("tries at %v, want every 500 ms from 10 s to 30 s", run.calls)
		}
		if len(run.lost) != 1 || !errors.Is(run.lost[0], down) {
			t.Errorf("lost got %v, want the error once", run.lost)
		}
		if took := time.Since(start); took != ttl {
			t.Errorf("gave up after %s, want when the lease ran out (%s)", took, ttl)
		}
	})
}

func TestKeepLeaseAliveGivesUpAtOnceOnAFinalError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 30 * time.Second
		start := time.Now()
		var run keepAliveRun
		KeepLeaseAlive(context.Background(), ttl, start.Add(ttl), func(context.Context) (time.Time, error) {
			run.call(start)
			return start.Add(ttl), ErrLockLost
		}, func(err error) bool { return errors.Is(err, ErrLockLost) }, func(err error) { run.lost = append(run.lost, err) })
		if len(run.calls) != 1 || run.calls[0] != ttl/3 {
			t.Errorf("tries at %v, want one at 10 s", run.calls)
		}
		if len(run.lost) != 1 || !errors.Is(run.lost[0], ErrLockLost) {
			t.Errorf("lost got %v, want ErrLockLost once", run.lost)
		}
	})
}
