// Package telemetry makes what the agent does visible: every request,
// issuance, renewal and failure is an Event, which becomes a structured log
// line, an entry of the events stream in Redis, a Prometheus counter and,
// when configured, a signed webhook call. Nothing here may slow issuance
// down: sinks that do I/O work from a bounded queue and drop when it is full.
package telemetry

import (
	"context"
	"log/slog"
	"strings"
	"time"
)

// Event types.
const (
	EventRequested = "requested" // nginx recorded a name without a certificate
	EventDenied    = "denied"    // the policy or a pre-flight check refused a name
	EventIssued    = "issued"    // a new certificate was stored
	EventRenewed   = "renewed"   // a certificate was replaced before it expired
	EventFailed    = "failed"    // an order failed
	EventRevoked   = "revoked"   // a certificate was revoked at the CA
	EventDeleted   = "deleted"   // a certificate was removed from the store
	EventBusy      = "busy"      // another agent holds the name's lease
	EventFromPeer  = "from_peer" // a peer site's certificate was stored instead of an order
	// EventAccount: the CA no longer knew the ACME account (a CA reset), and
	// this agent registered it again for the fleet.
	EventAccount = "account_registered"
	// EventRefused: a requested name that no allow rule allows, or that is
	// not a valid host name (Kind: policy or invalid). A scanner sends
	// thousands: they are counted and logged at debug level, never written
	// to the events stream or the webhook one by one (Streamed), so they
	// cannot push the issuance, renewal and failure events out.
	EventRefused = "refused"
	// EventDeferred: an order that waits for its CA (or Redis) to answer
	// again: down, or not answering in time. Not the name's failure: it is
	// tried again once the CA answers, and the outage itself is logged,
	// counted and alerted on once (the CA state), so during an outage of
	// hours the deferrals of thousands of names are logged at debug level
	// and never streamed one by one.
	EventDeferred = "deferred"
)

// Streamed reports whether events of type typ go to the events stream and
// the webhook one by one.
func Streamed(typ string) bool { return typ != EventRefused && typ != EventDeferred }

// Event is one thing that happened to a name.
type Event struct {
	Type        string    `json:"type"`
	Kind        string    `json:"kind,omitempty"` // of an order: issue or renew; of a refusal: policy or invalid
	Name        string    `json:"name"`
	Names       []string  `json:"names,omitempty"`
	Node        string    `json:"node,omitempty"` // the nginx host, for requests
	Reason      string    `json:"reason,omitempty"`
	Error       string    `json:"error,omitempty"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	Fingerprint string    `json:"fingerprint_sha256,omitempty"`
	Took        float64   `json:"took_seconds,omitempty"` // how long the order ran
	At          time.Time `json:"at"`
}

// messages are the log messages of the event types.
var messages = map[string]string{
	EventRequested: "name requested",
	EventDenied:    "name not allowed by policy",
	EventIssued:    "certificate issued",
	EventRenewed:   "certificate renewed",
	EventFailed:    "order failed",
	EventRevoked:   "certificate revoked",
	EventDeleted:   "certificate deleted",
	EventBusy:      "another agent holds the lease",
	EventFromPeer:  "certificate taken from a peer site",
	EventAccount:   "the CA lost the ACME account: registered it again",
	EventRefused:   "name refused",
	EventDeferred:  "order waits for the CA",
}

// Sink receives events. Emit must not block on I/O.
type Sink interface {
	Emit(ctx context.Context, e Event)
}

// Hub fans events out to its sinks and logs each one.
type Hub struct {
	log   *slog.Logger
	sinks []Sink
	now   func() time.Time
}

// NewHub returns a hub logging to log (default slog.Default()) and forwarding
// to sinks.
func NewHub(log *slog.Logger, sinks ...Sink) *Hub {
	if log == nil {
		log = slog.Default()
	}
	return &Hub{log: log, sinks: sinks, now: time.Now}
}

// Emit stamps, logs and forwards e. A nil hub does nothing, so components
// work without telemetry in tests.
func (h *Hub) Emit(ctx context.Context, e Event) {
	if h == nil {
		return
	}
	if e.At.IsZero() {
		e.At = h.now()
	}
	level := slog.LevelInfo
	switch e.Type {
	case EventFailed:
		level = slog.LevelError
	case EventAccount:
		level = slog.LevelWarn
	case EventBusy, EventRefused, EventDeferred:
		level = slog.LevelDebug
	}
	msg, ok := messages[e.Type]
	if !ok {
		msg = e.Type
	}
	attrs := []slog.Attr{slog.String("event", e.Type), slog.String("name", e.Name)}
	if len(e.Names) > 1 {
		attrs = append(attrs, slog.String("names", strings.Join(e.Names, ",")))
	}
	if e.Node != "" {
		attrs = append(attrs, slog.String("node", e.Node))
	}
	if e.Reason != "" {
		attrs = append(attrs, slog.String("reason", e.Reason))
	}
	if e.Error != "" {
		attrs = append(attrs, slog.String("error", e.Error))
	}
	if !e.NotAfter.IsZero() {
		attrs = append(attrs, slog.Time("not_after", e.NotAfter), slog.String("fingerprint", e.Fingerprint))
	}
	if e.Took > 0 {
		attrs = append(attrs, slog.Float64("took_seconds", e.Took))
	}
	h.log.LogAttrs(ctx, level, msg, attrs...)
	for _, s := range h.sinks {
		s.Emit(ctx, e)
	}
}
