package peer

// The JSON bodies of the peer API (docs/peers.md). Times are Unix seconds.

// Health answers GET /peer/v1/health.
type Health struct {
	Site         string `json:"site"`
	Time         int64  `json:"time"`
	Certificates int64  `json:"certificates"`
}

// TokenPush is the body of PUT /peer/v1/tokens/{name}/{token}.
type TokenPush struct {
	KeyAuthorization string `json:"key_authorization"`
	TTLSeconds       int    `json:"ttl_seconds"`
}

// Record is a certificate record as it travels between sites: enough to
// rebuild store.CertRecord (names, dates, issuer, serial and fingerprint are
// read again from the chain by the receiver, never trusted from the sender).
// It is the body of PUT /peer/v1/certs/{name} and the answer of GET.
type Record struct {
	FullChain string `json:"fullchain"`
	Key       string `json:"key"`
	Primary   string `json:"primary"`
	KeyType   string `json:"key_type"`
	CA        string `json:"ca"`
	CertURL   string `json:"cert_url"`
	IssuedAt  int64  `json:"issued_at"`
}

// MaxRecordsAsked bounds the names of one POST /peer/v1/records.
const MaxRecordsAsked = 200

// RecordsRequest is the body of POST /peer/v1/records: the names whose
// records the caller wants, 1 to MaxRecordsAsked of them.
type RecordsRequest struct {
	Names []string `json:"names"`
}

// NamedRecord is the answer for one name of a RecordsRequest: the record
// held for it, as GET /peer/v1/certs/{name} answers it, or none (nil) when
// that would answer 404.
type NamedRecord struct {
	Name   string  `json:"name"`
	Record *Record `json:"record,omitempty"`
}

// Records answers POST /peer/v1/records: the names asked, in their order,
// each with its record, as far as they fit in a few MB (at least one). The
// names left out are to be asked again.
type Records struct {
	Site    string        `json:"site"`
	Records []NamedRecord `json:"records"`
}

// PushResult answers PUT /peer/v1/certs/{name} (200): whether the record
// was stored, and if not, why ("same": the receiver holds it already;
// "older": the receiver holds a newer one).
type PushResult struct {
	Stored bool   `json:"stored"`
	Reason string `json:"reason,omitempty"`
}

// DeleteResult answers DELETE /peer/v1/certs/{name}?fingerprint=F (200).
type DeleteResult struct {
	Deleted bool `json:"deleted"`
}

// InventoryEntry is one certificate a site holds, under its primary name.
type InventoryEntry struct {
	Name        string   `json:"name"`
	Names       []string `json:"names"`
	Fingerprint string   `json:"fingerprint"`
	NotBefore   int64    `json:"not_before"`
	NotAfter    int64    `json:"not_after"`
}

// Tombstone is a certificate a site deleted or revoked.
type Tombstone struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	Until       int64  `json:"until"`
}

// MaxInventoryPage bounds the certificates (and, apart, the tombstones) of
// one inventory page: about 250 bytes each, so a page stays under 1 MB.
const MaxInventoryPage = 2000

// WindowDigest sums up the certificates a site holds whose not-after falls
// in [Start, Start+width): their count, and the XOR of a truncated SHA-256
// of each one's name, not-after and fingerprint, in hex. Two sites holding the same
// certificates there answer the same.
type WindowDigest struct {
	Start  int64  `json:"start"`
	Count  int64  `json:"count"`
	Digest string `json:"digest"`
}

// InventoryDigests answers GET /peer/v1/inventory/digests?from=F&to=T&width=W
// (to is optional: no end): the windows of W seconds that hold a
// certificate, in order.
type InventoryDigests struct {
	Site    string         `json:"site"`
	Width   int64          `json:"width"`
	Windows []WindowDigest `json:"windows"`
}

// InventoryPage answers GET /peer/v1/inventory/entries?from=F&to=T&offset=O&limit=L:
// the certificates whose not-after falls in [F, T), and the tombstones
// that expire there, each list skipping its first O and holding at most L.
// More is true while either list goes on.
type InventoryPage struct {
	Site         string           `json:"site"`
	Certificates []InventoryEntry `json:"certificates"`
	Tombstones   []Tombstone      `json:"tombstones"`
	More         bool             `json:"more"`
}

// LeaseRequest is the body of POST (take) and PUT (extend)
// /peer/v1/leases/{name}. Holder is "<site>/<random>"; the site part must be
// the signing site.
type LeaseRequest struct {
	Holder     string `json:"holder"`
	TTLSeconds int    `json:"ttl_seconds"`
}

// LeaseResult answers a lease request: 200 when granted, 409 when the name is
// leased to someone else (an agent of the receiving site or another site).
type LeaseResult struct {
	Granted bool   `json:"granted"`
	Error   string `json:"error,omitempty"`
	// HolderSite names, with a 409, the site whose agent holds the name
	// there ("" when unknown).
	HolderSite string `json:"holder_site,omitempty"`
}

// ErrorBody is the body of every 4xx and 5xx answer.
type ErrorBody struct {
	Error string `json:"error"`
}
