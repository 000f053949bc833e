// Package peer keeps the sites of a fleet in step: each site has its own
// Redis, nginx and agents, and its agents talk to the other sites' agents over
// an authenticated HTTPS API (docs/peers.md). Tokens reach every site before
// the CA validates, certificates reach every site after issuance, a periodic
// inventory exchange repairs what a site missed, and a lease taken on a
// majority of sites keeps two sites from ordering the same name at once.
package peer

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Wire protocol constants. Changing any of them breaks peers running an
// older agent: bump the version in PathPrefix and in the canonical string.
const (
	// PathPrefix starts every path of the peer API.
	PathPrefix = "/peer/v1/"

	HeaderSite      = "Certagent-Site"
	HeaderTimestamp = "Certagent-Timestamp"
	HeaderNonce     = "Certagent-Nonce"
	HeaderSignature = "Certagent-Signature"

	// signatureVersion prefixes the signature header's value and starts the
	// signed string, so a signature can never be taken for another version's.
	signatureVersion = "v1"

	// MaxSkew is how far a request's timestamp may be from the receiver's
	// clock, either way.
	MaxSkew = 5 * time.Minute
	// NonceTTL is how long a receiver remembers a nonce: longer than any
	// timestamp it accepts, so a replay is refused as a replay or as stale.
	NonceTTL = 2 * MaxSkew
	// MaxBody bounds every request body (a certificate record with a long
	// RSA chain is under 16 KiB).
	MaxBody = 1 << 20
	// MinSecretLen is the shortest shared secret accepted.
	MinSecretLen = 32
	// MaxTokenTTL caps the TTL of a pushed HTTP-01 token, as for local ones.
	MaxTokenTTL = 600 * time.Second
)

// Errors a verifier returns; the server answers each with 401 (replays and
// stale timestamps too: the caller cannot tell them from forgeries).
var (
	ErrUnsigned     = errors.New("the request is not signed")
	ErrUnknownSite  = errors.New("the request comes from a site that is not a configured peer")
	ErrBadSignature = errors.New("the signature does not match")
	ErrStale        = errors.New("the request's timestamp is outside the accepted window")
	ErrReplayed     = errors.New("the request's nonce was used before")
)

// Signer signs requests from one site with the fleet's shared secret.
type Signer struct {
	site   string
	secret []byte
}

// NewSigner returns a signer for site. The secret is shared by every site of
// the fleet and must be at least MinSecretLen bytes.
func NewSigner(site string, secret []byte) (*Signer, error) {
	if err := CheckSiteID(site); err != nil {
		return nil, err
	}
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("the peer secret has %d bytes; at least %d are needed", len(secret), MinSecretLen)
	}
	return &Signer{site: site, secret: secret}, nil
}

// Site returns the id of the signing site.
func (s *Signer) Site() string { return s.site }

// Sign sets the site, timestamp, nonce and signature headers of req for
// body (which must be exactly what is sent; nil for no body).
func (s *Signer) Sign(req *http.Request, body []byte, now time.Time) error {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("signing a peer request: %w", err)
	}
	nonce := hex.EncodeToString(raw[:])
	ts := strconv.FormatInt(now.Unix(), 10)
	req.Header.Set(HeaderSite, s.site)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderSignature, signatureVersion+"="+hex.EncodeToString(
		mac(s.secret, req.Method, requestTarget(req), s.site, ts, nonce, body)))
	return nil
}

// Signed is what a verified request proved: who sent it and with which
// nonce. The caller must still refuse the nonce if it was seen before
// (see NonceStore).
type Signed struct {
	Site      string
	Nonce     string
	Timestamp time.Time
}

// Verify checks the headers of req against body (read in full, at most
// MaxBody bytes) with the shared secret: the site must be one of peers, the
// timestamp within MaxSkew of now, the signature exact. Replays are the
// caller's to refuse with the returned nonce.
func Verify(req *http.Request, body []byte, secret []byte, peers map[string]bool, now time.Time) (*Signed, error) {
	site, ts, nonce, sig := req.Header.Get(HeaderSite), req.Header.Get(HeaderTimestamp),
		req.Header.Get(HeaderNonce), req.Header.Get(HeaderSignature)
	if site == "" || ts == "" || nonce == "" || sig == "" {
		return nil, ErrUnsigned
	}
	if !peers[site] {
		return nil, fmt.Errorf("%w: %q", ErrUnknownSite, site)
	}
	if len(nonce) != 32 || strings.Trim(nonce, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("%w: malformed nonce", ErrUnsigned)
	}
	hexSig, ok := strings.CutPrefix(sig, signatureVersion+"=")
	if !ok {
		return nil, fmt.Errorf("%w: unknown signature version", ErrBadSignature)
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return nil, fmt.Errorf("%w: not hex", ErrBadSignature)
	}
	if !hmac.Equal(got, mac(secret, req.Method, requestTarget(req), site, ts, nonce, body)) {
		return nil, ErrBadSignature
	}
	// The timestamp is checked after the signature so that a forger learns
	// nothing about the receiver's clock.
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: %q", ErrStale, ts)
	}
	at := time.Unix(unix, 0)
	if d := now.Sub(at); d > MaxSkew || d < -MaxSkew {
		return nil, fmt.Errorf("%w: %s from the receiver's clock", ErrStale, d.Round(time.Second))
	}
	return &Signed{Site: site, Nonce: nonce, Timestamp: at}, nil
}

// requestTarget is the path and query as sent, so a signature covers both.
func requestTarget(req *http.Request) string {
	return req.URL.RequestURI()
}

// mac is HMAC-SHA256 over a string that names every part of the request
// that matters, one per line; the body enters as its SHA-256.
func mac(secret []byte, method, target, site, ts, nonce string, body []byte) []byte {
	bodySum := sha256.Sum256(body)
	h := hmac.New(sha256.New, secret)
	for _, part := range []string{"certagent-peer-" + signatureVersion, method, target, site, ts, nonce} {
		h.Write([]byte(part))
		h.Write([]byte{'\n'})
	}
	h.Write([]byte(hex.EncodeToString(bodySum[:])))
	return h.Sum(nil)
}

// CheckSiteID accepts 1 to 63 characters of lowercase letters, digits and
// '-' ('.' and ':' are excluded: ids appear in Redis keys and lease holders).
func CheckSiteID(site string) error {
	if site == "" || len(site) > 63 || strings.Trim(site, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return fmt.Errorf("site id %q: use 1 to 63 lowercase letters, digits and '-'", site)
	}
	return nil
}
