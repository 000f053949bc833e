package manager

import (
	"context"
	"time"
)

// changeBlock bounds one wait on the stream of changes, so that a shutdown
// is never held longer than this.
const changeBlock = time.Second

// changeBatch is how many entries of the stream of changes one read takes.
const changeBatch = 100

// sleep waits up to d, until ctx ends, or until a certificate is written
// by anyone: an import, a peer site's push, another agent. Each write
// schedules its certificate to be looked at at once (store.PutCert), and
// the stream of changes tells of it, so it enters the schedule now rather
// than at the next Interval. after is the last entry of the stream seen;
// sleep returns the new one ("" when the stream could not be read: the next
// sleep starts from its newest entry).
func (r *Renewer) sleep(ctx context.Context, d time.Duration, after string) string {
	st := r.cfg.Manager.cfg.Store
	deadline := time.Now().Add(d)
	for ctx.Err() == nil {
		left := time.Until(deadline)
		if left < 10*time.Millisecond {
			// Redis counts blocks in milliseconds, and 0 is forever.
			pause(ctx, left)
			return after
		}
		block := min(left, changeBlock)
		if after == "" {
			var err error
			if after, err = st.LastChangeID(ctx); err != nil {
				pause(ctx, block)
				continue
			}
		}
		changes, err := st.ReadChanges(ctx, after, block, changeBatch)
		if err != nil {
			// Redis away: the schedule read after the sleep says so.
			pause(ctx, block)
			return ""
		}
		written := false
		for _, c := range changes {
			after = c.ID
			written = written || c.Op == "put"
		}
		if written {
			return after
		}
	}
	return after
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
