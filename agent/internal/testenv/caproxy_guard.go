package testenv

import (
	"strings"
	"sync"
)

// pebbleGuard keeps a new order and an authorization read from reaching
// Pebble at the same time (CAProxy.GuardPebbleLockCycle).
type pebbleGuard struct {
	on bool
	mu sync.RWMutex
}

// GuardPebbleLockCycle makes the proxy hold a newOrder while an
// authorization is read, and authorization reads while a newOrder runs, for
// the rest of the test; call it before the first request.
//
// Pebble v2.10.3 deadlocks under concurrent load without it: a newOrder
// holds its store's read lock while it reads every authorization
// (MemoryStore.FindValidAuthorization), an authorization's handler holds
// that authorization's lock while it asks for the store's read lock
// (WebFrontEndImpl.Authz, through getAcctByKey), and once a writer (the
// next newOrder's AddOrder or AddChallenge) queues for the store's lock,
// Go's RWMutex gives the handler no read lock: no signed request is
// answered again. The scan grows with every authorization Pebble holds, so
// a long run at 8 or more orders at once hangs it for good after a few
// hundred to a few thousand orders, while its directory still answers. A
// production CA has no such lock, so a benchmark that measures the agent,
// not Pebble, keeps the two apart here, at the cost of running newOrders
// one at a time (each is a few milliseconds in Pebble, which takes its
// store's write lock for each anyway).
func (cp *CAProxy) GuardPebbleLockCycle() { cp.guard.on = true }

// enter waits until a request for path may go to Pebble and returns what
// lets the next one go.
func (g *pebbleGuard) enter(path string) (leave func()) {
	switch {
	case !g.on:
		return func() {}
	case strings.HasPrefix(path, PathNewOrder):
		g.mu.Lock()
		return g.mu.Unlock
	case strings.HasPrefix(path, PathAuthz):
		g.mu.RLock()
		return g.mu.RUnlock
	}
	return func() {}
}
