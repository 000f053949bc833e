package store

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// CertRecord is one stored certificate: what nginx serves and what the agent
// needs to show and renew it. Field names are those of the Redis hash.
type CertRecord struct {
	FullChain   string    // PEM, leaf first
	Key         string    // PEM, PKCS #8
	NotBefore   time.Time // leaf not-before
	NotAfter    time.Time // leaf not-after
	Names       []string  // DNS names, primary first
	Issuer      string    // issuer distinguished name
	Serial      string    // lowercase hex
	Fingerprint string    // SHA-256 of the leaf DER, lowercase hex
	KeyType     string    // ec256, ec384, rsa2048, rsa4096
	CA          string    // ACME directory URL
	CertURL     string    // ACME certificate URL
	IssuedAt    time.Time // when it was stored
}

// Primary returns the name the record is indexed under.
func (r *CertRecord) Primary() string {
	if len(r.Names) == 0 {
		return ""
	}
	return r.Names[0]
}

// NewCertRecord fills a record from a PEM chain and key, reading the names,
// dates, issuer, serial and fingerprint from the leaf. primary, when not empty,
// is put first among the names.
func NewCertRecord(fullChain, keyPEM []byte, primary string) (*CertRecord, error) {
	block, _ := pem.Decode(fullChain)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the chain does not start with a PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the leaf certificate: %w", err)
	}
	names := make([]string, 0, len(leaf.DNSNames))
	if primary != "" {
		names = append(names, primary)
	}
	for _, n := range leaf.DNSNames {
		if n != primary {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("the leaf certificate has no DNS names")
	}
	sum := sha256.Sum256(leaf.Raw)
	return &CertRecord{
		FullChain:   string(fullChain),
		Key:         string(keyPEM),
		NotBefore:   leaf.NotBefore,
		NotAfter:    leaf.NotAfter,
		Names:       names,
		Issuer:      leaf.Issuer.String(),
		Serial:      leaf.SerialNumber.Text(16),
		Fingerprint: hex.EncodeToString(sum[:]),
	}, nil
}

func (r *CertRecord) fields() map[string]any {
	f := map[string]any{
		"fullchain":   r.FullChain,
		"key":         r.Key,
		"not_before":  strconv.FormatInt(r.NotBefore.Unix(), 10),
		"not_after":   strconv.FormatInt(r.NotAfter.Unix(), 10),
		"names":       strings.Join(r.Names, ","),
		"issuer":      r.Issuer,
		"serial":      r.Serial,
		"fingerprint": r.Fingerprint,
		"key_type":    r.KeyType,
		"ca":          r.CA,
		"cert_url":    r.CertURL,
		"issued_at":   strconv.FormatInt(r.IssuedAt.Unix(), 10),
	}
	maps.Copy(f, DERRecordFields(r.FullChain, r.Key))
	return f
}

func recordFromFields(f map[string]string) (*CertRecord, error) {
	unix := func(field string) (time.Time, error) {
		v, err := strconv.ParseInt(f[field], 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("field %s: %w", field, err)
		}
		return time.Unix(v, 0).UTC(), nil
	}
	r := &CertRecord{
		FullChain:   f["fullchain"],
		Key:         f["key"],
		Issuer:      f["issuer"],
		Serial:      f["serial"],
		Fingerprint: f["fingerprint"],
		KeyType:     f["key_type"],
		CA:          f["ca"],
		CertURL:     f["cert_url"],
	}
	if f["names"] != "" {
		r.Names = strings.Split(f["names"], ",")
	}
	var err error
	if r.NotAfter, err = unix("not_after"); err != nil {
		return nil, err
	}
	if r.NotBefore, err = unix("not_before"); err != nil {
		return nil, err
	}
	if r.IssuedAt, err = unix("issued_at"); err != nil {
		return nil, err
	}
	return r, nil
}

// PutCert stores rec under the key of each of its names, indexes its primary
// name by expiry and schedules it for a renewal check at rec.IssuedAt, in one
// transaction. It takes no lease: the agent's orders write through
// Lock.PutCert, which refuses a stale fencing token.
func (s *Store) PutCert(ctx context.Context, rec *CertRecord) error {
	return s.putCert(ctx, rec, nil)
}

func (s *Store) putCert(ctx context.Context, rec *CertRecord, lock *Lock) error {
	if len(rec.Names) == 0 {
		return errors.New("storing a certificate: the record has no names")
	}
	if lock != nil {
		// The write deletes the order record: a read of it taken with the
		// lease is outdated.
		lock.orderRead.Store(nil)
	}
	write := func(p redis.Pipeliner) error {
		s.queueCertWrite(ctx, p, rec)
		if lock != nil {
			// The order that produced rec under the lease is done.
			p.Del(ctx, s.keys.Order(lock.name))
		}
		return nil
	}
	var err error
	if lock == nil {
		_, err = s.rdb.TxPipelined(ctx, write)
	} else {
		err = s.putFenced(ctx, rec, lock, write)
	}
	if err != nil {
		return fmt.Errorf("storing the certificate for %s: %w", rec.Primary(), err)
	}
	return nil
}

// queueCertWrite queues every command of a certificate write (the copies,
// the indexes, the changes entries) for one MULTI, so each way of storing a
// record writes the same keys.
func (s *Store) queueCertWrite(ctx context.Context, p redis.Pipeliner, rec *CertRecord) {
	fields := rec.fields()
	for _, name := range rec.Names {
		p.Del(ctx, s.keys.Cert(name))
		p.HSet(ctx, s.keys.Cert(name), fields)
	}
	p.ZAdd(ctx, s.keys.Expiry(), redis.Z{Score: float64(rec.NotAfter.Unix()), Member: rec.Primary()})
	// A new certificate starts a new renewal: the schedulers look at it
	// at once to learn the CA's renewal window and choose a time.
	p.Del(ctx, s.keys.Renewal(rec.Primary()))
	p.ZRem(ctx, s.keys.RenewalFailures(), rec.Primary())
	p.ZAdd(ctx, s.keys.Renewals(), redis.Z{Score: float64(rec.IssuedAt.Unix()), Member: rec.Primary()})
	s.noteChanges(ctx, p, "put", rec.Names, rec.Fingerprint)
}

// errFenceGone is a write under a lease whose fence counter Redis no longer
// has: a restart without persistence lost it (and the lease) after the
// holder's last extension.
var errFenceGone = fmt.Errorf("the fence is gone: %w", ErrFenced)

// putFenced runs write in a MULTI that EXEC only applies while the name's
// fence still holds the lock's token. A fence that Redis lost is first taken
// back with the lease, as the keep-alive's next extension would (only when
// nobody took the name since), rather than failing an order that outlived a
// short restart.
func (s *Store) putFenced(ctx context.Context, rec *CertRecord, lock *Lock, write func(redis.Pipeliner) error) error {
	if lock.name != rec.Primary() {
		return fmt.Errorf("the lease is on %s, not on the primary name", lock.name)
	}
	err := s.putUnderFence(ctx, lock, write)
	if errors.Is(err, errFenceGone) {
		if extendErr := lock.Extend(ctx); extendErr != nil {
			return fmt.Errorf("token %d: %w (taking it back: %v)", lock.fence, err, extendErr)
		}
		err = s.putUnderFence(ctx, lock, write)
	}
	return err
}

// fencedWriteScript runs the commands of a write only while the fence
// (KEYS[1]; the keys the commands write follow, see fencedWriteArgs) holds
// the writer's token (ARGV[1]), atomically like a MULTI: in
// one round trip, where WATCH, the fence's read, the MULTI and the UNWATCH
// would take four. ARGV from 2 on holds each command as its number of
// arguments followed by them. As in a MULTI, a command that fails does not
// stop the others; the first error is returned. It returns {0} once
// written, {-1} when the fence is gone, {-2, current} when it moved on.
var fencedWriteScript = redis.NewScript(`
local fence = redis.call("GET", KEYS[1])
if not fence then return {-1} end
if fence ~= ARGV[1] then return {-2, tonumber(fence) or 0} end
local failed
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local reply = redis.pcall(unpack(ARGV, i + 1, i + n))
  if type(reply) == "table" and reply.err and not failed then failed = reply.err end
  i = i + n + 1
end
if failed then return redis.error_reply(failed) end
return {0}`)

// putUnderFence runs write only while the name's fence still holds the
// lock's token, in one script: no acquire can draw a new token between the
// check and the write.
func (s *Store) putUnderFence(ctx context.Context, lock *Lock, write func(redis.Pipeliner) error) error {
	queued := s.rdb.Pipeline()
	defer queued.Discard()
	if err := write(queued); err != nil {
		return err
	}
	keys, args := fencedWriteArgs(s.keys.Fence(lock.name), lock.fence, queued.Cmds())
	res, err := fencedWriteScript.Run(ctx, s.rdb, keys, args...).Int64Slice()
	switch {
	case err != nil:
		return err
	case res[0] == -1:
		return fmt.Errorf("token %d: %w", lock.fence, errFenceGone)
	case res[0] == -2:
		return fmt.Errorf("token %d, current %d: %w", lock.fence, res[1], ErrFenced)
	}
	return nil
}

// fencedWriteArgs are the KEYS and ARGV of fencedWriteScript for the
// commands of a write under fence: every key they write is declared after
// the fence, so that Redis Cluster checks each one (a slot being migrated
// answers ASK or TRYAGAIN) before the script writes anything, as it checks
// every command of a MULTI before the EXEC, rather than failing one command
// in the middle of the write and running the others. Each command of a
// certificate write names one key, right after the command's name.
func fencedWriteArgs(fenceKey string, token int64, cmds []redis.Cmder) ([]string, []any) {
	keys := []string{fenceKey}
	args := []any{token}
	for _, cmd := range cmds {
		if key, ok := cmd.Args()[1].(string); ok && !slices.Contains(keys, key) {
			keys = append(keys, key)
		}
		args = append(args, len(cmd.Args()))
		args = append(args, cmd.Args()...)
	}
	return keys, args
}

// ChangesMaxLen bounds the stream of changes; nginx workers that fall further
// behind than this drop their whole cache.
const ChangesMaxLen = 1000

func (s *Store) noteChanges(ctx context.Context, p redis.Pipeliner, op string, names []string, fingerprint string) {
	for _, name := range names {
		p.XAdd(ctx, &redis.XAddArgs{
			Stream: s.keys.Changes(), MaxLen: ChangesMaxLen, Approx: true,
			Values: []any{"name", name, "op", op, "fingerprint", fingerprint},
		})
	}
}

// DeleteCert removes the record stored for name and every copy under the
// other names of the same certificate, its expiry index entry and its
// renewal schedule and state, and tombstones its fingerprint until its
// not-after so that no peer site brings it back. A name that a later
// certificate took over keeps that certificate. It returns the names it
// removed, or an error wrapping ErrNotFound.
func (s *Store) DeleteCert(ctx context.Context, name string) ([]string, error) {
	var removed []string
	err := s.watchRetry(ctx, func(tx *redis.Tx) error {
		f, err := tx.HGetAll(ctx, s.keys.Cert(name)).Result()
		// A key of another type is removed like a corrupt record.
		wrongType := isWrongType(err)
		if err != nil && !wrongType {
			return err
		}
		if len(f) == 0 && !wrongType {
			return fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		// A corrupt record is removed under this name only: its other
		// copies are unknown, and so is its fingerprint.
		var rec *CertRecord
		copies := []string{name}
		if decoded, err := recordFromFields(f); !wrongType && err == nil && len(decoded.Names) > 0 {
			rec = decoded
			if copies, err = s.matchingCopies(ctx, tx, rec, name); err != nil {
				return err
			}
		}
		now := time.Now()
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			s.queueCertDelete(ctx, p, rec, copies)
			if rec != nil && rec.Fingerprint != "" {
				s.queueTombstone(ctx, p, rec.Fingerprint, rec.Primary(), rec.NotAfter, now, false)
			}
			return nil
		})
		removed = copies
		return err
	}, s.keys.Cert(name))
	if err != nil {
		return nil, fmt.Errorf("deleting the certificate for %s: %w", name, err)
	}
	return removed, nil
}

// matchingCopies returns the names of rec that still hold a copy of it
// (held under name, already read): another certificate may have been stored
// under some of them since. It watches those keys for the transaction.
func (s *Store) matchingCopies(ctx context.Context, tx *redis.Tx, rec *CertRecord, name string) ([]string, error) {
	keys := make([]string, len(rec.Names))
	for i, n := range rec.Names {
		keys[i] = s.keys.Cert(n)
	}
	if err := tx.Watch(ctx, keys...).Err(); err != nil {
		return nil, err
	}
	cmds, err := tx.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, key := range keys {
			p.HGet(ctx, key, "fingerprint")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	copies := []string{}
	for i, cmd := range cmds {
		if rec.Names[i] == name || cmd.(*redis.StringCmd).Val() == rec.Fingerprint {
			copies = append(copies, rec.Names[i])
		}
	}
	return copies, nil
}

// queueCertDelete queues, for one MULTI, the removal of copies (names that
// hold rec, or the one name of a corrupt record when rec is nil), and when
// the primary name is among them, of its indexes and renewal state, with the
// changes entries.
func (s *Store) queueCertDelete(ctx context.Context, p redis.Pipeliner, rec *CertRecord, copies []string) {
	fingerprint := ""
	primary := copies[0]
	if rec != nil {
		fingerprint, primary = rec.Fingerprint, rec.Primary()
	}
	for _, n := range copies {
		p.Del(ctx, s.keys.Cert(n))
	}
	// The primary's index entries belong to whatever certificate holds the
	// primary name now; they go only with the copy under it.
	if slices.Contains(copies, primary) {
		p.ZRem(ctx, s.keys.Expiry(), primary)
		p.ZRem(ctx, s.keys.Renewals(), primary)
		p.Del(ctx, s.keys.Renewal(primary))
		p.ZRem(ctx, s.keys.RenewalFailures(), primary)
	}
	s.noteChanges(ctx, p, "delete", copies, fingerprint)
}

// GetCert returns the record stored for name, or an error wrapping
// ErrNotFound, or a *CorruptError when nginx could not serve it.
func (s *Store) GetCert(ctx context.Context, name string) (*CertRecord, error) {
	recs, errs, err := s.GetCerts(ctx, []string{name})
	if err != nil {
		return nil, err
	}
	return recs[0], errs[0]
}

// IndexEntry is one member of the expiry index.
type IndexEntry struct {
	Name     string
	NotAfter time.Time
}

// ListExpiring returns the indexed primary names whose not-after is at or
// before until, soonest first, at most limit of them (0: no limit).
func (s *Store) ListExpiring(ctx context.Context, until time.Time, limit int64) ([]IndexEntry, error) {
	out, err := s.rangeByTime(ctx, s.keys.Expiry(), "-inf", strconv.FormatInt(until.Unix(), 10), limit)
	if err != nil {
		return nil, fmt.Errorf("reading the expiry index: %w", err)
	}
	return out, nil
}

// rangeByTime reads the members of a sorted set scored by Unix seconds
// between from and to, soonest first, at most limit of them (0: no limit).
func (s *Store) rangeByTime(ctx context.Context, key, from, to string, limit int64) ([]IndexEntry, error) {
	zs, err := s.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: key, Start: from, Stop: to, ByScore: true, Count: limit,
	}).Result()
	if err != nil {
		return nil, err
	}
	out := make([]IndexEntry, 0, len(zs))
	for _, z := range zs {
		name, _ := z.Member.(string)
		out = append(out, IndexEntry{Name: name, NotAfter: time.Unix(int64(z.Score), 0).UTC()})
	}
	return out, nil
}

// GetCerts returns the records stored for names in one round trip, in order;
// a name with no record or a corrupt one (see CorruptError) has a nil entry
// and an error in errs.
func (s *Store) GetCerts(ctx context.Context, names []string) (recs []*CertRecord, errs []error, err error) {
	b := s.NewBatch()
	certs := b.GetCerts(ctx, names)
	b.Exec(ctx)
	return certs()
}

// GetCerts queues Store.GetCerts.
func (b *Batch) GetCerts(ctx context.Context, names []string) func() ([]*CertRecord, []error, error) {
	checked := b.readChecked(ctx, names)
	return func() ([]*CertRecord, []error, error) {
		checked, err := checked()
		if err != nil {
			return nil, nil, err
		}
		recs := make([]*CertRecord, len(names))
		errs := make([]error, len(names))
		for i, c := range checked {
			recs[i], errs[i] = c.Record, c.Err
		}
		return recs, errs, nil
	}
}
