package manager

import (
	"context"
	"errors"
	"log/slog"

	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// refuse marks name refused, so nginx stops holding its handshakes and
// remembers the refusal, and counts the refusal of kind (store.RefusedByPolicy,
// store.RefusedInvalid) in Redis and the metrics. It writes no event to the
// events stream: a scanner's flood of refused names must not push the
// issuance and failure events out of it (telemetry.EventRefused).
func (c *Consumer) refuse(ctx context.Context, log *slog.Logger, req store.Request, name, kind, reason string) {
	if err := c.cfg.Store.MarkRefusedCounted(ctx, name, reason, kind, c.cfg.Manager.cfg.Clock.Now()); err != nil {
		log.Warn("marking the name as refused", "error", err)
	}
	shown := name
	if shown == "" {
		shown = req.Name
	}
	c.cfg.Manager.cfg.Events.Emit(ctx, telemetry.Event{Type: telemetry.EventRefused, Kind: kind, Name: shown,
		Node: req.Node, Reason: reason})
}

// requested emits the event of an entry whose name is taken up: an allow
// rule lets it through, it waits for its next attempt after a failed order,
// or the ask URL could not say. Names no rule allows are counted instead
// (refuse).
func (c *Consumer) requested(ctx context.Context, req store.Request, name string) {
	c.cfg.Manager.cfg.Events.Emit(ctx, telemetry.Event{Type: telemetry.EventRequested, Name: name, Node: req.Node})
}

// refuseInvalid refuses an entry whose name is not a valid host name. When
// it still has the form of one (letters, digits, hyphens: an xn-- label that
// does not decode, or decodes to what IDNA2008 disallows) the mark goes
// under that form, the key nginx reads for it; otherwise nginx could not
// have recorded it and there is nothing to mark.
func (c *Consumer) refuseInvalid(ctx context.Context, log *slog.Logger, req store.Request, cause error) {
	if req.NoName {
		// Not an empty name: no name at all (another writer's entry).
		cause = errNoNameField
	}
	key, err := names.NormalizeLDH(req.Name)
	if err != nil {
		key = ""
	}
	c.refuse(ctx, log, req, key, store.RefusedInvalid, cause.Error())
}

// errNoNameField is why an entry of the requests stream without a name
// field is refused.
var errNoNameField = errors.New("the requests stream entry has no name field")
