package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
)

// ErrInvalidRecord marks a certificate record that is not valid for the name
// it came for: the chain or the key does not parse, the key is not the
// leaf's, the leaf does not cover the name, or it has expired or is not
// valid yet. The server answers such a push with 422.
var ErrInvalidRecord = errors.New("the certificate record is not valid")

// Accept stores a record received from a peer site for name (pushed to this
// site, or pulled from the peer) if it is valid for name and newer than the
// record held; the answer says whether it was stored and, if not, why
// (store.ReasonSame, store.ReasonOlder, store.ReasonTombstoned). Names,
// dates, issuer, serial and fingerprint are read from the chain, never taken
// from the sender. A record that fails a check returns an error wrapping
// ErrInvalidRecord, and nothing is written.
func Accept(ctx context.Context, st *store.Store, name string, r Record, now time.Time) (PushResult, error) {
	rec, err := checkRecord(name, r, now)
	if err != nil {
		return PushResult{}, err
	}
	stored, reason, err := st.PutCertIfNewer(ctx, rec)
	if err != nil {
		return PushResult{}, err
	}
	return PushResult{Stored: stored, Reason: reason}, nil
}

// RecordOf is rec as it travels to a peer site.
func RecordOf(rec *store.CertRecord) Record {
	return Record{
		FullChain: rec.FullChain,
		Key:       rec.Key,
		Primary:   rec.Primary(),
		KeyType:   rec.KeyType,
		CA:        rec.CA,
		CertURL:   rec.CertURL,
		IssuedAt:  rec.IssuedAt.Unix(),
	}
}

// checkRecord rebuilds the store's record from r after checking it is
// valid for name at now. The chain and the key are stored as nginx serves
// them (PEM certificates only, the key as PKCS #8), whatever else the sender
// put around them.
func checkRecord(name string, r Record, now time.Time) (*store.CertRecord, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w for %s: %s", ErrInvalidRecord, name, fmt.Sprintf(format, args...))
	}
	if err := checkName(name, true); err != nil {
		return nil, invalid("%v", err)
	}
	if err := checkName(r.Primary, true); err != nil {
		return nil, invalid("primary name: %v", err)
	}
	pair, err := tls.X509KeyPair([]byte(r.FullChain), []byte(r.Key))
	if err != nil {
		return nil, invalid("the chain and the key do not form a pair: %v", err)
	}
	var chain []byte
	var leaf *x509.Certificate
	for i, der := range pair.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, invalid("certificate %d of the chain: %v", i, err)
		}
		if i == 0 {
			leaf = cert
		}
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if !now.Before(leaf.NotAfter) {
		return nil, invalid("the certificate expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	// Not valid yet (beyond the clock skew tolerated between sites), it
	// would be served to clients that refuse it, and its later not-before
	// would make it win over every certificate issued until then.
	if leaf.NotBefore.After(now.Add(MaxSkew)) {
		return nil, invalid("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	leafNames, err := storedNames(leaf.DNSNames)
	if err != nil {
		return nil, invalid("%v", err)
	}
	// The primary name is the key the record is indexed and renewed under:
	// it must be one of the certificate's own names, not merely covered.
	if !slices.Contains(leafNames, r.Primary) {
		return nil, invalid("the primary name %s is not among the certificate's names %v", r.Primary, leafNames)
	}
	if !names.Covers(leafNames, name) {
		return nil, invalid("the certificate's names %v do not cover it", leafNames)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(pair.PrivateKey)
	if err != nil {
		return nil, invalid("encoding the key: %v", err)
	}
	rec, err := store.NewCertRecord(chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), r.Primary)
	if err != nil {
		return nil, invalid("%v", err)
	}
	rec.Names = []string{r.Primary}
	for _, n := range leafNames {
		if !slices.Contains(rec.Names, n) {
			rec.Names = append(rec.Names, n)
		}
	}
	rec.KeyType, rec.CA, rec.CertURL = r.KeyType, r.CA, r.CertURL
	// issued_at schedules the first renewal check; one in the future (a
	// sender's clock ahead) would put it off, so it is never later than now.
	rec.IssuedAt = time.Unix(r.IssuedAt, 0)
	if r.IssuedAt <= 0 || rec.IssuedAt.After(now) {
		rec.IssuedAt = now
	}
	return rec, nil
}

// checkName accepts a name in the normal form of the schema: what
// names.Normalize returns, with canonical xn-- labels, and with wildcard
// also "*." and such a name (wildcard certificates are stored under it).
func checkName(name string, wildcard bool) error {
	base := name
	if rest, ok := strings.CutPrefix(name, "*."); ok && wildcard {
		base = rest
	}
	normal, err := names.Normalize(base)
	if err != nil {
		return err
	}
	if normal != base {
		return fmt.Errorf("name %q is not in normal form (%q)", name, normal)
	}
	return nil
}

// storedNames normalizes a leaf's DNS names as the store keys them.
func storedNames(dnsNames []string) ([]string, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("the certificate has no DNS names")
	}
	out := make([]string, 0, len(dnsNames))
	for _, raw := range dnsNames {
		prefix, base := "", raw
		if rest, ok := strings.CutPrefix(raw, "*."); ok {
			prefix, base = "*.", rest
		}
		n, err := names.Normalize(base)
		if err != nil {
			return nil, fmt.Errorf("the certificate's name %q: %v", raw, err)
		}
		if !slices.Contains(out, prefix+n) {
			out = append(out, prefix+n)
		}
	}
	return out, nil
}
