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

// Inventory answers GET /peer/v1/inventory.
type Inventory struct {
	Site         string           `json:"site"`
	Certificates []InventoryEntry `json:"certificates"`
	Tombstones   []Tombstone      `json:"tombstones"`
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
}

// ErrorBody is the body of every 4xx and 5xx answer.
type ErrorBody struct {
	Error string `json:"error"`
}
