package peer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// How an inventory exchange narrows down what differs (docs/peers.md). Both
// sites sum up their certificates by not-after in windows of topWidth
// seconds (about 12 days: a few dozen windows, a few KB, for any number of
// certificates); a window whose sums differ is split in windowSplit
// narrower ones, until it holds at most listBelow certificates (or is one
// second wide), and then it is listed, a page of listPage at a time.
const (
	topWidth    = 1 << 20
	windowSplit = 16
	listBelow   = 1000
	listPage    = 1000
	// pullWorkers is how many requests for certificates are sent to one
	// peer at once: enough to keep a link busy, few enough for a peer's
	// Redis.
	pullWorkers = 8
	// pullBatch is how many certificates one request asks for, when the
	// peer answers many at once (MaxRecordsAsked at most).
	pullBatch = 50
)

// windowDigests is the store's windows as they travel.
func windowDigests(windows []store.InventoryWindow) []WindowDigest {
	out := make([]WindowDigest, len(windows))
	for i, w := range windows {
		out[i] = WindowDigest{Start: w.Start, Count: w.Count, Digest: hex.EncodeToString(w.Digest[:])}
	}
	return out
}

// inventoryRun is one inventory exchange with one peer: what it found and did.
type inventoryRun struct {
	f   *Fleet
	p   *peerConn
	now time.Time

	listed  atomic.Int64 // entries the peer listed
	pulled  atomic.Int64 // certificates stored here
	deleted atomic.Int64 // certificates deleted here by the peer's tombstones
	windows int64        // windows listed

	mu       sync.Mutex
	failed   []error // the first maxReported failures
	failures int

	// batches feeds the pullers, which pull while the next pages are
	// listed: the exchange is not held up by each page's slowest pull.
	batches chan []InventoryEntry
	pullers sync.WaitGroup
}

// maxReported bounds the failures one exchange keeps to report: a peer
// that fails every pull must not fill the memory with errors.
const maxReported = 5

func (r *inventoryRun) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures++
	if len(r.failed) < maxReported {
		r.failed = append(r.failed, err)
	}
}

// syncWith exchanges inventories with one peer: it compares the sums of the
// two sites' certificates window by window, lists the windows that differ,
// applies the peer's tombstones there and pulls the certificates that are
// missing here or newer than the ones held here, unless they were deleted
// here. Memory stays within a few pages, whatever the number of
// certificates; one summary is logged.
func (f *Fleet) syncWith(ctx context.Context, p *peerConn, now time.Time) error {
	started := time.Now()
	r := &inventoryRun{f: f, p: p, now: now}
	r.startPullers(ctx)
	err := r.compare(ctx, now.Unix(), 0, topWidth)
	r.waitPullers()
	if err != nil {
		r.fail(err)
	}
	p.count(r.pulled.Load(), 0, f.cfg.Clock.Now())
	level := f.cfg.Logger.Debug
	if r.pulled.Load() > 0 || r.deleted.Load() > 0 || r.failures > 0 {
		level = f.cfg.Logger.Info
	}
	level("exchanged inventories with a peer site", "peer", p.client.ID(), "windows_listed", r.windows,
		"entries_listed", r.listed.Load(), "pulled", r.pulled.Load(), "deleted", r.deleted.Load(),
		"failed", r.failures, "took", time.Since(started).Round(time.Millisecond))
	if r.failures > len(r.failed) {
		r.failed = append(r.failed, fmt.Errorf("and %d more failures", r.failures-len(r.failed)))
	}
	return errors.Join(r.failed...)
}

// compare compares the windows of width seconds in [from, to) (to 0: no
// end) of both sites, and goes into each one that differs.
func (r *inventoryRun) compare(ctx context.Context, from, to, width int64) error {
	remote, err := r.p.client.Digests(ctx, from, to, width)
	r.f.note(ctx, r.p, err)
	if err != nil {
		return err
	}
	local, err := r.f.cfg.Store.InventoryDigests(ctx, from, to, width)
	if err != nil {
		return fmt.Errorf("exchanging inventories with %s: %w", r.p.client.ID(), err)
	}
	for _, w := range differing(remote.Windows, windowDigests(local)) {
		wFrom, wTo := max(w.Start, from), w.Start+width
		if to != 0 {
			wTo = min(wTo, to)
		}
		if w.Count <= listBelow || width == 1 {
			err = r.list(ctx, wFrom, wTo, w.Count)
		} else {
			err = r.compare(ctx, wFrom, wTo, max(width/windowSplit, 1))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// differing returns the windows whose sums differ, by start, with the
// peer's count (0 when only this site holds certificates there: the peer
// may still hold tombstones for them).
func differing(remote, local []WindowDigest) []WindowDigest {
	var out []WindowDigest
	i, j := 0, 0
	for i < len(remote) || j < len(local) {
		switch {
		case j == len(local) || i < len(remote) && remote[i].Start < local[j].Start:
			out = append(out, remote[i])
			i++
		case i == len(remote) || local[j].Start < remote[i].Start:
			out = append(out, WindowDigest{Start: local[j].Start})
			j++
		default:
			if remote[i] != local[j] {
				out = append(out, remote[i])
			}
			i++
			j++
		}
	}
	return out
}

// list reads the peer's entries in [from, to), where it counted count
// certificates, a page at a time and applies each page. A page over the
// answer limit (certificates with many long names) is asked again half as
// long, down to one entry.
func (r *inventoryRun) list(ctx context.Context, from, to, count int64) error {
	r.windows++
	for offset, limit := int64(0), int64(listPage); ; offset += limit {
		page, err := r.p.client.Entries(ctx, from, to, offset, limit)
		for errors.Is(err, errAnswerTooLarge) && limit > 1 {
			limit /= 2
			page, err = r.p.client.Entries(ctx, from, to, offset, limit)
		}
		r.f.note(ctx, r.p, err)
		if err != nil {
			return err
		}
		r.listed.Add(int64(len(page.Certificates) + len(page.Tombstones)))
		if err := r.apply(ctx, page); err != nil {
			return err
		}
		if !page.More {
			return nil
		}
		if err := r.goesOn(page, from, to, count, offset+limit, limit); err != nil {
			return err
		}
	}
}

// errEndlessInventory is a peer listing a window on and on.
var errEndlessInventory = errors.New("the peer's inventory does not end")

// goesOn checks that a page after which the peer says its window of count
// certificates goes on, listed up to end, can be believed. The certificates
// end within count entries (and a page more for those written meanwhile);
// past them only tombstones go on, and then the page is full of them. A
// broken or hostile peer answering more pages for ever, empty ones for
// example, would otherwise keep the exchange going without end.
func (r *inventoryRun) goesOn(page *InventoryPage, from, to, count, end, limit int64) error {
	if end < count+listPage || int64(len(page.Tombstones)) == limit {
		return nil
	}
	return fmt.Errorf("exchanging inventories with %s: %w: it says [%d, %d) goes on past %d entries, where it "+
		"counted %d certificates, with a page of %d certificates and %d tombstones: stopped listing it",
		r.p.client.ID(), errEndlessInventory, from, to, end, count, len(page.Certificates), len(page.Tombstones))
}

// apply applies one page of a peer's inventory here: its tombstones, then
// its certificates. Only a failure of this site's store stops the exchange;
// a certificate that cannot be pulled is counted as failed.
func (r *inventoryRun) apply(ctx context.Context, page *InventoryPage) error {
	st, log, id := r.f.cfg.Store, r.f.cfg.Logger, r.p.client.ID()
	for _, t := range page.Tombstones {
		if t.Until < r.now.Unix() {
			continue
		}
		if dead, err := st.Tombstoned(ctx, t.Fingerprint, t.Name); err != nil || dead {
			if err != nil {
				return err
			}
			continue
		}
		deleted, _, err := st.DeleteCertIfFingerprint(ctx, t.Name, t.Fingerprint)
		if err != nil {
			return err
		}
		if deleted {
			r.deleted.Add(1)
			log.Debug("deleted a certificate a peer site deleted", "name", t.Name, "peer", id, "fingerprint", t.Fingerprint)
		}
	}
	want, err := r.wanted(ctx, page.Certificates)
	if err != nil {
		return err
	}
	r.pull(want)
	return nil
}

// wanted returns the entries of a page to pull: valid now, missing here or
// superseding the record held (store.Supersedes), and not deleted here under any of their names.
func (r *inventoryRun) wanted(ctx context.Context, entries []InventoryEntry) ([]InventoryEntry, error) {
	st := r.f.cfg.Store
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name
	}
	held, err := st.HeldVersions(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("exchanging inventories with %s: %w", r.p.client.ID(), err)
	}
	var want []InventoryEntry
	var fingerprints []string
	var alsoNames [][]string
	for i, e := range entries {
		// A missing or corrupt record is replaced by any valid one.
		if h := held[i]; e.NotAfter <= r.now.Unix() ||
			h.OK && !store.Supersedes(e.Fingerprint, time.Unix(e.NotBefore, 0), h.Fingerprint, h.NotBefore) {
			continue
		}
		want = append(want, e)
		fingerprints = append(fingerprints, e.Fingerprint)
		alsoNames = append(alsoNames, append([]string{e.Name}, e.Names...))
	}
	dead, err := st.AnyTombstoned(ctx, fingerprints, alsoNames)
	if err != nil {
		return nil, fmt.Errorf("exchanging inventories with %s: %w", r.p.client.ID(), err)
	}
	alive := want[:0]
	for i, e := range want {
		if !dead[i] {
			alive = append(alive, e)
		}
	}
	return alive, nil
}

// startPullers starts pullWorkers pullers, each sending one request at a
// time: pullBatch certificates a request, or one when the peer answers no
// more.
func (r *inventoryRun) startPullers(ctx context.Context) {
	r.batches = make(chan []InventoryEntry)
	for range pullWorkers {
		r.pullers.Go(func() {
			for batch := range r.batches {
				if r.p.singlePulls.Load() || !r.pullMany(ctx, batch) {
					for _, e := range batch {
						r.pullOne(ctx, e)
					}
				}
			}
		})
	}
}

// waitPullers waits for the pullers to pull every batch handed to them.
func (r *inventoryRun) waitPullers() {
	close(r.batches)
	r.pullers.Wait()
}

// pull hands the entries to the pullers, pullBatch at a time; it returns
// once they took the last batch.
func (r *inventoryRun) pull(entries []InventoryEntry) {
	for start := 0; start < len(entries); start += pullBatch {
		r.batches <- entries[start:min(start+pullBatch, len(entries))]
	}
}

// pullMany fetches the entries' certificates in as few requests as the
// peer's answers allow, checks each one as a single pull does, and stores
// those found newer in one transaction a request. It returns false, having
// pulled nothing, when the peer answers only one certificate a request.
func (r *inventoryRun) pullMany(ctx context.Context, entries []InventoryEntry) bool {
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name
	}
	for len(names) > 0 {
		got, err := r.p.client.GetCerts(ctx, names)
		r.f.note(ctx, r.p, err)
		if errors.Is(err, ErrRecordsUnsupported) {
			r.p.singlePulls.Store(true)
			return false
		}
		if err != nil {
			r.fail(err)
			return true
		}
		r.acceptMany(ctx, got)
		names = names[len(got):]
	}
	return true
}

// acceptMany checks the records as Accept does and stores the valid ones,
// in transactions of distinct primary names and at most storeBudget bytes.
func (r *inventoryRun) acceptMany(ctx context.Context, got []NamedRecord) {
	id := r.p.client.ID()
	var pending []*store.CertRecord
	for _, nr := range got {
		if nr.Record == nil { // deleted there since
			continue
		}
		rec, err := checkRecord(nr.Name, *nr.Record, r.now)
		if err != nil {
			r.fail(fmt.Errorf("pulling the certificate for %s from %s: %w", nr.Name, id, err))
			continue
		}
		pending = append(pending, rec)
	}
	for len(pending) > 0 {
		var batch []*store.CertRecord
		batch, pending = storeBatch(pending)
		r.store(ctx, batch)
	}
}

// storeBudget bounds the bytes one transaction of pulled records writes
// (each record is written once for each of its names).
const storeBudget = 4 << 20

// storeBatch splits off the first records with distinct primary names, as
// many as storeBudget allows (at least one), from the rest.
func storeBatch(recs []*store.CertRecord) (batch, rest []*store.CertRecord) {
	seen := map[string]bool{}
	size := 0
	for i, rec := range recs {
		size += len(rec.Names) * (len(rec.FullChain) + len(rec.Key))
		if seen[rec.Primary()] || size > storeBudget && len(batch) > 0 {
			rest = append(rest, recs[i:]...)
			break
		}
		seen[rec.Primary()] = true
		batch = append(batch, rec)
	}
	return batch, rest
}

// store writes the records that are newer than the ones held here.
func (r *inventoryRun) store(ctx context.Context, recs []*store.CertRecord) {
	out, err := r.f.cfg.Store.PutCertsIfNewer(ctx, recs)
	if err != nil {
		r.fail(fmt.Errorf("storing %d certificates pulled from %s: %w", len(recs), r.p.client.ID(), err))
		return
	}
	for i, o := range out {
		if o.Stored {
			r.pulled.Add(1)
			r.f.cfg.Logger.Debug("pulled a certificate from a peer site", "name", recs[i].Primary(),
				"peer", r.p.client.ID(), "fingerprint", recs[i].Fingerprint)
		}
	}
}

func (r *inventoryRun) pullOne(ctx context.Context, e InventoryEntry) {
	id := r.p.client.ID()
	rec, err := r.p.client.GetCert(ctx, e.Name)
	r.f.note(ctx, r.p, err)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) { // deleted there since
			r.fail(err)
		}
		return
	}
	res, err := Accept(ctx, r.f.cfg.Store, e.Name, *rec, r.now)
	if err != nil {
		r.fail(fmt.Errorf("pulling the certificate for %s from %s: %w", e.Name, id, err))
		return
	}
	if res.Stored {
		r.pulled.Add(1)
		r.f.cfg.Logger.Debug("pulled a certificate from a peer site", "name", e.Name, "peer", id, "fingerprint", e.Fingerprint)
	}
}
