package store

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/names"
)

// CorruptError says why the record stored under a name cannot be served:
// its fields do not decode, its chain or key does not parse, the key is not
// the leaf's, or the leaf does not cover the names it is stored for. nginx
// serves the fallback certificate for such a record. Reason never contains
// key material.
type CorruptError struct {
	Name   string // the name the record is stored under
	Key    string // its Redis key
	Reason string
	// Record holds the fields that decoded (names, dates, issuer), without
	// the private key; nil when the dates or the key's type did not.
	Record *CertRecord
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("certificate for %s: %s: %s", e.Name, ErrCorrupt, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// checkRecord decodes the fields of the record stored under name and checks
// that nginx can serve it for name and for every name it lists.
func checkRecord(name, key string, f map[string]string) (*CertRecord, error) {
	rec, err := summaryRecord(name, key, f)
	if err != nil {
		return nil, err
	}
	if reason := unservable(name, rec); reason != "" {
		shown := *rec
		shown.Key = ""
		return nil, &CorruptError{Name: name, Key: key, Reason: reason, Record: &shown}
	}
	return rec, nil
}

// summaryRecord decodes the fields of the record stored under name that
// need no parsing of the chain or key; what does not decode makes it
// corrupt, with the names it lists when they read.
func summaryRecord(name, key string, f map[string]string) (*CertRecord, error) {
	rec, err := recordFromFields(f)
	if err != nil {
		partial := &CertRecord{}
		if f["names"] != "" {
			partial.Names = strings.Split(f["names"], ",")
		}
		return nil, &CorruptError{Name: name, Key: key, Reason: err.Error(), Record: partial}
	}
	return rec, nil
}

// unservable returns why nginx could not serve rec for name and for its
// names, or "" when it can: what lua/certagent/cache.lua checks (the chain
// and the key parse, the key is the leaf's), and what a client checks (the
// leaf covers the name), and that not_after, which nginx trusts, is the
// leaf's own.
func unservable(name string, rec *CertRecord) string {
	if rec.FullChain == "" {
		return "field fullchain missing or empty"
	}
	if rec.Key == "" {
		return "field key missing or empty"
	}
	leaf, err := parseChain(rec.FullChain)
	if err != nil {
		return "fullchain: " + err.Error()
	}
	priv, err := parsePrivateKey(rec.Key)
	if err != nil {
		return "key: " + err.Error()
	}
	pub, ok := priv.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return "the key does not belong to the leaf certificate"
	}
	if !leaf.NotAfter.Equal(rec.NotAfter) {
		return fmt.Sprintf("field not_after (%s) is not the leaf's not-after (%s)",
			rec.NotAfter.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	leafNames := make([]string, len(leaf.DNSNames))
	for i, n := range leaf.DNSNames {
		leafNames[i] = strings.ToLower(strings.TrimSuffix(n, "."))
	}
	for _, n := range append([]string{name}, rec.Names...) {
		if !names.Covers(leafNames, n) {
			return fmt.Sprintf("the certificate is for %s, not for %s", strings.Join(leafNames, ", "), n)
		}
	}
	return ""
}

// parseChain parses every certificate of a PEM chain and returns the first.
// Anything but whitespace after the last block (a chain cut off in the
// middle of a certificate) makes it unusable: nginx refuses it too.
func parseChain(chain string) (*x509.Certificate, error) {
	var leaf *x509.Certificate
	rest := []byte(chain)
	for i := 0; ; i++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("block %d is a %s, not a CERTIFICATE", i+1, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i+1, err)
		}
		if leaf == nil {
			leaf = cert
		}
	}
	if leaf == nil {
		return nil, errors.New("no PEM certificate")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("data after the last certificate (a truncated PEM block?)")
	}
	return leaf, nil
}

// parsePrivateKey parses a PEM private key in any of the forms nginx reads.
func parsePrivateKey(keyPEM string) (crypto.Signer, error) {
	block, _ := pem.Decode([]byte(keyPEM))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("a %s block, not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", key)
	}
	return signer, nil
}

// CheckedRecord is one stored certificate as a walk over the expiry index
// sees it.
type CheckedRecord struct {
	Name string // the primary name it is indexed under
	// Record is the record, without its private key; nil when Err is set.
	Record *CertRecord
	// Err wraps ErrNotFound (indexed, no longer stored) or is a
	// *CorruptError.
	Err error
}

// walkPage is how many records one round trip of WalkCerts reads.
const walkPage = 200

// WalkCerts checks every stored certificate indexed with a not-after at or
// before until, soonest first, calling fn for each. It reads the expiry
// index a page at a time (see walkExpiryAfter) with one pipelined HGETALL per
// page, so memory stays bounded however many are stored; a record of the
// wrong type is reported as corrupt, naming its key. Records moved or
// written during the walk may be missed or seen twice. An error from fn
// ends the walk.
func (s *Store) WalkCerts(ctx context.Context, until time.Time, fn func(CheckedRecord) error) error {
	return s.WalkCertsFrom(ctx, "", until, fn)
}

// readChecked reads and checks the records stored under names in one round
// trip. Only a failure to talk to Redis is returned as an error.
func (s *Store) readChecked(ctx context.Context, names []string) ([]CheckedRecord, error) {
	b := s.NewBatch()
	checked := b.readChecked(ctx, names)
	b.Exec(ctx)
	return checked()
}

// readChecked queues Store.readChecked.
func (b *Batch) readChecked(ctx context.Context, names []string) func() ([]CheckedRecord, error) {
	return b.queueRecords(ctx, names, func(p redis.Pipeliner, key string) func() (map[string]string, error) {
		return p.HGetAll(ctx, key).Result
	}, checkRecord)
}

// readRecords reads the records stored under names in one round trip (see
// queueRecords).
func (s *Store) readRecords(ctx context.Context, names []string,
	query func(p redis.Pipeliner, key string) func() (map[string]string, error),
	decode func(name, key string, f map[string]string) (*CertRecord, error)) ([]CheckedRecord, error) {
	b := s.NewBatch()
	records := b.queueRecords(ctx, names, query, decode)
	b.Exec(ctx)
	return records()
}

// queueRecords queues the reads of the records stored under names: query
// queues the read of one key and gives its fields once the pipeline ran,
// decode makes them a record. A key of the wrong type is corrupt, naming
// it; a key that is gone is ErrNotFound. Only a failure to talk to Redis is
// returned as an error.
func (b *Batch) queueRecords(ctx context.Context, names []string,
	query func(p redis.Pipeliner, key string) func() (map[string]string, error),
	decode func(name, key string, f map[string]string) (*CertRecord, error)) func() ([]CheckedRecord, error) {
	results := make([]func() (map[string]string, error), len(names))
	for i, name := range names {
		results[i] = query(b.p, b.s.keys.Cert(name))
	}
	return func() ([]CheckedRecord, error) {
		out := make([]CheckedRecord, len(names))
		for i, result := range results {
			name, key := names[i], b.s.keys.Cert(names[i])
			out[i].Name = name
			switch f, err := result(); {
			case isWrongType(err):
				out[i].Err = &CorruptError{Name: name, Key: key, Reason: b.s.wrongType(ctx, key)}
			case err != nil:
				return nil, fmt.Errorf("reading the certificate for %s: %w", name, err)
			case len(f) == 0:
				out[i].Err = fmt.Errorf("certificate for %s: %w", name, ErrNotFound)
			default:
				out[i].Record, out[i].Err = decode(name, key, f)
			}
		}
		return out, nil
	}
}

func isWrongType(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE")
}

// wrongType names the type a key holds instead of a hash, for the reason of
// a corrupt record (a rare, extra round trip).
func (s *Store) wrongType(ctx context.Context, key string) string {
	typ, err := s.rdb.Type(ctx, key).Result()
	if err != nil {
		typ = "value of another type"
	}
	return fmt.Sprintf("the key %s holds a %s, not a hash", key, typ)
}
