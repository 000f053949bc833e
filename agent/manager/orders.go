package manager

import (
	"context"
	"errors"
	"log/slog"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

// leaseJournal keeps the order running for a name with the name's lease
// (store.Lock.RecordOrder): the agent that takes the name over after this
// one died resumes the order instead of placing a second one.
type leaseJournal struct {
	lock *store.Lock
	log  *slog.Logger
	name string
	// recorded, when set, is set by Record: an order exists at the CA.
	recorded *bool
}

// Pending returns the recorded order; an unusable record is no order.
func (j leaseJournal) Pending(ctx context.Context) (*acmeclient.PendingOrder, error) {
	rec, err := j.lock.RunningOrder(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case errors.Is(err, store.ErrCorrupt):
		j.log.Warn("the recorded order is unusable; ordering anew", "name", j.name, "error", err)
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &acmeclient.PendingOrder{CA: rec.CA, URL: rec.URL, Names: rec.Names,
		KeyType: rec.KeyType, KeyPEM: rec.KeyPEM, Expires: rec.Expires}, nil
}

// Record never stops the order: without the record only a crash costs more
// (a second order), and whether the lease is still held is for KeepAlive and
// the fenced write to tell.
func (j leaseJournal) Record(ctx context.Context, o acmeclient.PendingOrder) error {
	if j.recorded != nil {
		*j.recorded = true
	}
	err := j.lock.RecordOrder(ctx, &store.OrderRecord{CA: o.CA, URL: o.URL, Names: o.Names,
		KeyType: o.KeyType, KeyPEM: o.KeyPEM, Expires: o.Expires})
	if err != nil {
		j.log.Warn("the running order could not be recorded: an agent taking the name over would order again",
			"name", j.name, "order", o.URL, "error", err)
	}
	return nil
}

// Forget removes the record of an order that is dead at the CA.
func (j leaseJournal) Forget(ctx context.Context) error {
	if err := j.lock.ForgetOrder(ctx); err != nil {
		j.log.Warn("forgetting a dead order", "name", j.name, "error", err)
	}
	return nil
}
