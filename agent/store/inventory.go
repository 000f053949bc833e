package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// InventoryEntry is one stored certificate, as a peer site sees it in an
// inventory: enough to tell whether to fetch it.
type InventoryEntry struct {
	Name        string // primary name
	Names       []string
	Fingerprint string
	NotBefore   time.Time
	NotAfter    time.Time
}

// inventoryPage is how many names one round trip of the inventory reads.
const inventoryPage = 500

// MaxInventoryWindows bounds the windows one InventoryDigests call returns,
// so an answer stays small whatever width a caller asks for.
const MaxInventoryWindows = 4096

// ErrTooManyWindows is returned when the certificates spread over more than
// MaxInventoryWindows windows of the width asked for.
var ErrTooManyWindows = errors.New("the certificates spread over too many windows")

// InventoryWindow sums up the certificates whose not-after falls in
// [Start, Start+width): how many, and a digest of their names, not-afters
// and fingerprints that two sites holding the same certificates compute
// alike.
type InventoryWindow struct {
	Start  int64
	Count  int64
	Digest [16]byte
}

// InventoryDigests walks the expiry index from from (inclusive) to to
// (exclusive; 0: no end), a page at a time, and sums it up in windows of
// width seconds aligned on multiples of width; empty windows are left out.
// It reads the index and each record's fingerprint (one pipelined HGET a
// page), never a whole record, so it costs O(n) of Redis and O(windows) of
// memory. The digest is the XOR of each entry's SHA-256 of name, not-after
// and fingerprint, truncated: it does not depend on the order, a renewal (a
// new not-after) changes it, and so does another certificate for the same
// names and not-after (two orders at two sites). A certificate written
// meanwhile may be missed or counted twice; the next exchange sees it.
func (s *Store) InventoryDigests(ctx context.Context, from, to, width int64) ([]InventoryWindow, error) {
	if width < 1 {
		return nil, fmt.Errorf("summing up the certificates: window width %d", width)
	}
	var out []InventoryWindow
	w := fromScore(from, to)
	w.page = inventoryPage
	err := s.walkExpiry(ctx, w, func(page []redis.Z) error {
		fingerprints, err := s.fingerprints(ctx, page)
		if err != nil {
			return err
		}
		for i, z := range page {
			if out, err = addToWindow(out, z, fingerprints[i], width); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("summing up the certificates: %w", err)
	}
	return out, nil
}

// addToWindow adds the index entry z, whose record has fingerprint, to the
// last window of out, or to a new one when z's not-after is past it.
func addToWindow(out []InventoryWindow, z redis.Z, fingerprint string, width int64) ([]InventoryWindow, error) {
	name, _ := z.Member.(string)
	score := int64(z.Score)
	start := score - score%width
	if n := len(out); n == 0 || out[n-1].Start != start {
		if n == MaxInventoryWindows {
			return nil, ErrTooManyWindows
		}
		out = append(out, InventoryWindow{Start: start})
	}
	w := &out[len(out)-1]
	w.Count++
	sum := sha256.Sum256([]byte(name + "\x00" + strconv.FormatInt(score, 10) + "\x00" + fingerprint))
	for i := range w.Digest {
		w.Digest[i] ^= sum[i]
	}
	return out, nil
}

// fingerprints reads the fingerprint of the record indexed under each entry
// of page, in one round trip ("" for a record missing, without one, or not a
// hash).
func (s *Store) fingerprints(ctx context.Context, page []redis.Z) ([]string, error) {
	cmds := make([]*redis.StringCmd, len(page))
	// Each command's error is looked at below.
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, z := range page {
			name, _ := z.Member.(string)
			cmds[i] = p.HGet(ctx, s.keys.Cert(name), "fingerprint")
		}
		return nil
	})
	out := make([]string, len(page))
	for i, cmd := range cmds {
		missing, err := recordRead(cmd.Err())
		if err != nil {
			return nil, fmt.Errorf("reading the fingerprints: %w", err)
		}
		if !missing {
			out[i] = cmd.Val()
		}
	}
	return out, nil
}

// recordRead sorts out the error of one read of a record in a pipeline:
// missing when there is no record (redis.Nil) or the key is not a hash (a
// corrupt record, which must not stop the reads of the others); else err,
// a failure to talk to Redis.
func recordRead(err error) (missing bool, _ error) {
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, redis.Nil), isWrongType(err):
		return true, nil
	default:
		return false, err
	}
}

// InventoryPage lists at most limit certificates whose not-after falls in
// [from, to) (to 0: no end), skipping the first offset index entries of that
// range, with one pipelined HMGET of the fields it needs. more reports
// whether the range goes on after this page. Missing and corrupt records are
// left out, and so are index entries whose record is now a copy of another
// certificate (that one is listed under its own primary name).
func (s *Store) InventoryPage(ctx context.Context, from, to, offset, limit int64) (entries []InventoryEntry, more bool, err error) {
	var names []string
	w := fromScore(from, to)
	w.offset, w.limit, w.page = offset, limit+1, inventoryPage
	err = s.walkExpiry(ctx, w, func(page []redis.Z) error {
		for _, z := range page {
			name, _ := z.Member.(string)
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("listing the certificates: %w", err)
	}
	if more = int64(len(names)) > limit; more {
		names = names[:limit]
	}
	cmds := make([]*redis.SliceCmd, len(names))
	// Each command's error is looked at below.
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, name := range names {
			cmds[i] = p.HMGet(ctx, s.keys.Cert(name), "names", "fingerprint", "not_before", "not_after")
		}
		return nil
	})
	for i, cmd := range cmds {
		missing, err := recordRead(cmd.Err())
		if err != nil {
			return nil, false, fmt.Errorf("listing the certificates: %w", err)
		}
		if missing {
			continue
		}
		if e, ok := inventoryEntry(names[i], cmd.Val()); ok {
			entries = append(entries, e)
		}
	}
	return entries, more, nil
}

// inventoryEntry decodes the HMGET of names, fingerprint, not_before and
// not_after of the record indexed under name.
func inventoryEntry(name string, vals []any) (InventoryEntry, bool) {
	str := make([]string, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok || s == "" {
			return InventoryEntry{}, false
		}
		str[i] = s
	}
	notBefore, err1 := strconv.ParseInt(str[2], 10, 64)
	notAfter, err2 := strconv.ParseInt(str[3], 10, 64)
	names := strings.Split(str[0], ",")
	if err1 != nil || err2 != nil || names[0] != name {
		return InventoryEntry{}, false
	}
	return InventoryEntry{Name: name, Names: names, Fingerprint: str[1],
		NotBefore: time.Unix(notBefore, 0).UTC(), NotAfter: time.Unix(notAfter, 0).UTC()}, true
}

// HeldVersion is what tells two certificates for a name apart: the
// fingerprint and not-before of the record stored under it.
type HeldVersion struct {
	Fingerprint string
	NotBefore   time.Time
	// OK is false when no record is stored under the name, or a corrupt one.
	OK bool
}

// HeldVersions returns, in order, the version of the record stored under
// each of names, a page at a time with one pipelined HMGET per page. It
// reads neither the chains nor the keys: an inventory exchange asks this
// of every certificate of a peer site.
func (s *Store) HeldVersions(ctx context.Context, names []string) ([]HeldVersion, error) {
	out := make([]HeldVersion, len(names))
	for start := 0; start < len(names); start += inventoryPage {
		page := names[start:min(start+inventoryPage, len(names))]
		cmds := make([]*redis.SliceCmd, len(page))
		// Each command's error is looked at below.
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, name := range page {
				cmds[i] = p.HMGet(ctx, s.keys.Cert(name), "fingerprint", "not_before", "not_after", "issued_at")
			}
			return nil
		})
		for i, cmd := range cmds {
			missing, err := recordRead(cmd.Err())
			if err != nil {
				return nil, fmt.Errorf("reading the certificates held: %w", err)
			}
			if !missing {
				out[start+i] = heldVersion(cmd.Val())
			}
		}
	}
	return out, nil
}

// heldVersion decodes the HMGET of fingerprint, not_before, not_after and
// issued_at; a record missing a date, or with one that does not parse, is
// corrupt as GetCert sees it (a missing fingerprint is not).
func heldVersion(vals []any) HeldVersion {
	str := make([]string, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if i > 0 && (!ok || s == "") {
			return HeldVersion{}
		}
		str[i] = s
	}
	var unix [3]int64
	for i := range unix {
		n, err := strconv.ParseInt(str[1+i], 10, 64)
		if err != nil {
			return HeldVersion{}
		}
		unix[i] = n
	}
	return HeldVersion{Fingerprint: str[0], NotBefore: time.Unix(unix[0], 0).UTC(), OK: true}
}
