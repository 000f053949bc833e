package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// PeerState is an agent's view of one peer site, as `certagent peers`
// shows it. Zero times mean never.
type PeerState struct {
	ID          string // the peer site's id
	URL         string
	Up          bool // the last call to it was answered
	LastOK      time.Time
	LastError   string
	LastErrorAt time.Time
	LastSync    time.Time // the last inventory exchange with it
	Pulled      int64     // certificates it brought here since the agent started
	Pushed      int64     // certificates it stored from here since the agent started
	Agent       string    // the agent that recorded this view
}

// peerStateJSON is the encoding of a PeerState in the peers hash: times in
// Unix seconds like everywhere else in the schema, 0 for never.
type peerStateJSON struct {
	URL         string `json:"url"`
	Up          bool   `json:"up"`
	LastOK      int64  `json:"last_ok"`
	LastError   string `json:"last_error"`
	LastErrorAt int64  `json:"last_error_at"`
	LastSync    int64  `json:"last_sync"`
	Pulled      int64  `json:"pulled"`
	Pushed      int64  `json:"pushed"`
	Agent       string `json:"agent"`
}

func peerUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func peerTime(unix int64) time.Time {
	if unix == 0 {
		return time.Time{}
	}
	return time.Unix(unix, 0).UTC()
}

// SetPeerStates replaces the recorded view of the peer sites with states, in
// one transaction, so a peer removed from the configuration stops showing.
func (s *Store) SetPeerStates(ctx context.Context, states []PeerState) error {
	fields := make([]any, 0, 2*len(states))
	for _, p := range states {
		v, err := json.Marshal(peerStateJSON{
			URL: p.URL, Up: p.Up, LastOK: peerUnix(p.LastOK), LastError: p.LastError,
			LastErrorAt: peerUnix(p.LastErrorAt), LastSync: peerUnix(p.LastSync),
			Pulled: p.Pulled, Pushed: p.Pushed, Agent: p.Agent,
		})
		if err != nil {
			return fmt.Errorf("recording the state of peer %s: %w", p.ID, err)
		}
		fields = append(fields, p.ID, string(v))
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.keys.Peers())
		if len(fields) > 0 {
			p.HSet(ctx, s.keys.Peers(), fields...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording the state of the peer sites: %w", err)
	}
	return nil
}

// PeerStates returns the recorded view of the peer sites, by id. A value
// that does not decode is returned with only its id and an error wrapping
// ErrCorrupt, after the others.
func (s *Store) PeerStates(ctx context.Context) ([]PeerState, error) {
	all, err := s.rdb.HGetAll(ctx, s.keys.Peers()).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the state of the peer sites: %w", err)
	}
	out := make([]PeerState, 0, len(all))
	var bad []string
	for id, v := range all {
		var j peerStateJSON
		if err := json.Unmarshal([]byte(v), &j); err != nil {
			bad = append(bad, id)
			continue
		}
		out = append(out, PeerState{
			ID: id, URL: j.URL, Up: j.Up, LastOK: peerTime(j.LastOK), LastError: j.LastError,
			LastErrorAt: peerTime(j.LastErrorAt), LastSync: peerTime(j.LastSync),
			Pulled: j.Pulled, Pushed: j.Pushed, Agent: j.Agent,
		})
	}
	slices.SortFunc(out, func(a, b PeerState) int { return strings.Compare(a.ID, b.ID) })
	if len(bad) > 0 {
		slices.Sort(bad)
		for _, id := range bad {
			out = append(out, PeerState{ID: id})
		}
		return out, fmt.Errorf("state of peer %s: %w", strings.Join(bad, ", "), ErrCorrupt)
	}
	return out, nil
}
