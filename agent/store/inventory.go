package store

import (
	"context"
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

// inventoryPage is how many names one round trip of Inventory reads.
const inventoryPage = 500

// Inventory lists every stored certificate under its primary name, walking
// the expiry index a page at a time with one pipelined HMGET of the fields
// it needs per page. It costs O(n) and does not block Redis; a certificate
// written or deleted meanwhile may be missed or seen in its old state, which
// the next exchange repairs. Missing and corrupt records are left out, and
// so are index entries whose record is now a copy of another certificate
// (that one is listed under its own primary name).
func (s *Store) Inventory(ctx context.Context) ([]InventoryEntry, error) {
	var out []InventoryEntry
	seen := map[string]bool{}
	for start := int64(0); ; start += inventoryPage {
		page, err := s.rdb.ZRange(ctx, s.keys.Expiry(), start, start+inventoryPage-1).Result()
		if err != nil {
			return nil, fmt.Errorf("listing the certificates: %w", err)
		}
		cmds := make([]*redis.SliceCmd, len(page))
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, name := range page {
				cmds[i] = p.HMGet(ctx, s.keys.Cert(name), "names", "fingerprint", "not_before", "not_after")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("listing the certificates: %w", err)
		}
		for i, cmd := range cmds {
			// Entries move down the index while it is walked: one may show twice.
			if e, ok := inventoryEntry(page[i], cmd.Val()); ok && !seen[e.Name] {
				seen[e.Name] = true
				out = append(out, e)
			}
		}
		if len(page) < inventoryPage {
			return out, nil
		}
	}
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
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, name := range page {
				cmds[i] = p.HMGet(ctx, s.keys.Cert(name), "fingerprint", "not_before", "not_after", "issued_at")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("reading the certificates held: %w", err)
		}
		for i, cmd := range cmds {
			out[start+i] = heldVersion(cmd.Val())
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
