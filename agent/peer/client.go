package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/store"
)

// DefaultTimeout bounds each call to a peer when no timeout is configured.
const DefaultTimeout = 5 * time.Second

// Answer size limits: one record at most, or one inventory page
// (MaxInventoryPage entries of each kind, about 250 bytes each).
const (
	maxAnswer     = MaxBody
	maxPageAnswer = 4 * MaxBody
)

// errAnswerTooLarge is a peer's answer over the size a call takes.
var errAnswerTooLarge = errors.New("the answer is too large")

// StatusError is a peer's answer with a 4xx or 5xx status.
type StatusError struct {
	Peer    string // the peer site's id
	Method  string
	Path    string // below PathPrefix
	Status  int
	Message string // the answer's ErrorBody, or the start of its body

	holderSite string // a 409 to a lease request: who holds the name there
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("peer %s answered %d %s to %s %s: %s",
		e.Peer, e.Status, http.StatusText(e.Status), e.Method, e.Path, e.Message)
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// ID is the peer site's id.
	ID string
	// URL is the peer's base URL, https://host:port; PathPrefix is added.
	URL string
	// Signer signs every request with this site's id and the fleet's secret.
	Signer *Signer
	// HTTPClient sends the requests; it should trust the fleet's TLS roots.
	// Its redirect policy is replaced: a redirect is an error (a redirected
	// request is not signed for its new path). Default: one with the system
	// roots.
	HTTPClient *http.Client
	// Timeout bounds each call. Default: DefaultTimeout.
	Timeout time.Duration
	// Clock dates the signatures. Default: the system clock.
	Clock clock.Clock
}

// Client calls the peer API of one peer site (docs/peers.md). It is safe
// for concurrent use.
type Client struct {
	id      string
	base    string // URL without a trailing slash
	signer  *Signer
	hc      *http.Client
	timeout time.Duration
	clock   clock.Clock
}

// NewClient returns a client for the peer cfg describes. It refuses a URL
// that is not https: records carry private keys.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := CheckSiteID(cfg.ID); err != nil {
		return nil, fmt.Errorf("peer %q: %w", cfg.ID, err)
	}
	if err := checkPeerURL(cfg.URL); err != nil {
		return nil, fmt.Errorf("peer %s: %w", cfg.ID, err)
	}
	if cfg.Signer == nil {
		return nil, fmt.Errorf("peer %s: no signer", cfg.ID)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = newHTTPClient(nil)
	}
	hc := *cfg.HTTPClient
	hc.CheckRedirect = noRedirects
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	return &Client{
		id: cfg.ID, base: strings.TrimRight(cfg.URL, "/"), signer: cfg.Signer,
		hc: &hc, timeout: cfg.Timeout, clock: cfg.Clock,
	}, nil
}

// checkPeerURL accepts https://host[:port][/path] without query, fragment
// or user information.
func checkPeerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("URL %q: %w", raw, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("URL %q: the peer API is HTTPS only (records carry private keys)", raw)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("URL %q: want https://host:port", raw)
	}
	return nil
}

// ID returns the peer site's id.
func (c *Client) ID() string { return c.id }

// URL returns the peer's base URL.
func (c *Client) URL() string { return c.base }

// Health asks the peer how it is: its id, clock and certificate count.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.call(ctx, http.MethodGet, "health", nil, &h, maxAnswer); err != nil {
		return nil, err
	}
	return &h, nil
}

// PutToken makes the peer answer the HTTP-01 token for name with keyAuth
// for ttl (the peer caps it at MaxTokenTTL).
func (c *Client) PutToken(ctx context.Context, name, token, keyAuth string, ttl time.Duration) error {
	body := TokenPush{KeyAuthorization: keyAuth, TTLSeconds: int(ttl / time.Second)}
	if err := c.call(ctx, http.MethodPut, "tokens/"+seg(name)+"/"+seg(token), body, nil, maxAnswer); err != nil {
		return fmt.Errorf("pushing the HTTP-01 token for %s to %s: %w", name, c.id, err)
	}
	return nil
}

// DeleteToken removes the token for name at the peer.
func (c *Client) DeleteToken(ctx context.Context, name, token string) error {
	if err := c.call(ctx, http.MethodDelete, "tokens/"+seg(name)+"/"+seg(token), nil, nil, maxAnswer); err != nil {
		return fmt.Errorf("removing the HTTP-01 token for %s at %s: %w", name, c.id, err)
	}
	return nil
}

// Digests asks the peer for the sums of its certificates in windows of
// width seconds from from to to (0: no end).
func (c *Client) Digests(ctx context.Context, from, to, width int64) (*InventoryDigests, error) {
	q := rangeQuery(from, to, map[string]int64{"width": width})
	var d InventoryDigests
	if err := c.call(ctx, http.MethodGet, "inventory/digests?"+q.Encode(), nil, &d, maxPageAnswer); err != nil {
		return nil, fmt.Errorf("fetching the inventory digests of %s: %w", c.id, err)
	}
	return &d, nil
}

// Entries asks the peer for a page of the certificates and tombstones whose
// not-after falls in [from, to) (to 0: no end).
func (c *Client) Entries(ctx context.Context, from, to, offset, limit int64) (*InventoryPage, error) {
	q := rangeQuery(from, to, map[string]int64{"offset": offset, "limit": limit})
	var page InventoryPage
	if err := c.call(ctx, http.MethodGet, "inventory/entries?"+q.Encode(), nil, &page, maxPageAnswer); err != nil {
		return nil, fmt.Errorf("fetching the inventory of %s: %w", c.id, err)
	}
	return &page, nil
}

// rangeQuery is the query of an inventory request for [from, to) (to 0:
// no end) with more integer parameters.
func rangeQuery(from, to int64, more map[string]int64) url.Values {
	q := url.Values{"from": {strconv.FormatInt(from, 10)}}
	if to != 0 {
		q.Set("to", strconv.FormatInt(to, 10))
	}
	for key, v := range more {
		q.Set(key, strconv.FormatInt(v, 10))
	}
	return q
}

// GetCert fetches the record the peer holds for name; an error wraps
// store.ErrNotFound when it holds none.
func (c *Client) GetCert(ctx context.Context, name string) (*Record, error) {
	var r Record
	if err := c.call(ctx, http.MethodGet, "certs/"+seg(name), nil, &r, maxAnswer); err != nil {
		if statusOf(err) == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", store.ErrNotFound, err)
		}
		return nil, fmt.Errorf("fetching the certificate for %s from %s: %w", name, c.id, err)
	}
	return &r, nil
}

// ErrRecordsUnsupported is the answer of a peer whose agent predates POST
// /peer/v1/records: its certificates are fetched one at a time.
var ErrRecordsUnsupported = errors.New("the peer does not answer many records at once")

// GetCerts fetches the records the peer holds for names (at most
// MaxRecordsAsked), in order, as far as they fit in one answer: the names
// left out are to be asked again. An error wraps ErrRecordsUnsupported when
// the peer only answers GetCert.
func (c *Client) GetCerts(ctx context.Context, names []string) ([]NamedRecord, error) {
	var res Records
	err := c.call(ctx, http.MethodPost, "records", RecordsRequest{Names: names}, &res, maxPageAnswer)
	if s := statusOf(err); s == http.StatusNotFound || s == http.StatusMethodNotAllowed {
		err = fmt.Errorf("%w: %w", ErrRecordsUnsupported, err)
	}
	if err != nil {
		return nil, fmt.Errorf("fetching %d certificates from %s: %w", len(names), c.id, err)
	}
	if len(res.Records) == 0 || len(res.Records) > len(names) {
		return nil, fmt.Errorf("fetching %d certificates from %s: %d answered", len(names), c.id, len(res.Records))
	}
	for i, r := range res.Records {
		if r.Name != names[i] {
			return nil, fmt.Errorf("fetching %d certificates from %s: answer %d is for %q, not %q", len(names), c.id, i, r.Name, names[i])
		}
	}
	return res.Records, nil
}

// PushCert offers the peer a record for name; the peer stores it only if it
// is valid for the name and newer than what it holds. A record the peer
// finds invalid is an error with status 422.
func (c *Client) PushCert(ctx context.Context, name string, r Record) (*PushResult, error) {
	var res PushResult
	if err := c.call(ctx, http.MethodPut, "certs/"+seg(name), r, &res, maxAnswer); err != nil {
		return nil, fmt.Errorf("pushing the certificate for %s to %s: %w", name, c.id, err)
	}
	return &res, nil
}

// DeleteCert asks the peer to delete its record for name if it has
// fingerprint, and to tombstone the fingerprint either way. It reports
// whether a record was deleted.
func (c *Client) DeleteCert(ctx context.Context, name, fingerprint string) (bool, error) {
	var res DeleteResult
	path := "certs/" + seg(name) + "?" + url.Values{"fingerprint": {fingerprint}}.Encode()
	if err := c.call(ctx, http.MethodDelete, path, nil, &res, maxAnswer); err != nil {
		return false, fmt.Errorf("deleting the certificate for %s at %s: %w", name, c.id, err)
	}
	return res.Deleted, nil
}

// TakeLease asks the peer for the lease on name for holder. It returns
// false, without an error, when the peer leased the name to someone else.
func (c *Client) TakeLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	granted, _, err := c.lease(ctx, http.MethodPost, "leasing", name, holder, ttl)
	return granted, err
}

// TakeLeaseOrHolder is TakeLease that also returns, when the peer refuses,
// the site whose agent holds the name there ("" when the peer does not say).
func (c *Client) TakeLeaseOrHolder(ctx context.Context, name, holder string, ttl time.Duration) (bool, string, error) {
	return c.lease(ctx, http.MethodPost, "leasing", name, holder, ttl)
}

// ExtendLease extends holder's lease on name at the peer. It returns false,
// without an error, when holder no longer has it there.
func (c *Client) ExtendLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	granted, _, err := c.lease(ctx, http.MethodPut, "extending the lease on", name, holder, ttl)
	return granted, err
}

func (c *Client) lease(ctx context.Context, method, doing, name, holder string, ttl time.Duration) (bool, string, error) {
	var res LeaseResult
	body := LeaseRequest{Holder: holder, TTLSeconds: int(ttl / time.Second)}
	if err := c.call(ctx, method, "leases/"+seg(name), body, &res, maxAnswer); err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.Status == http.StatusConflict {
			return false, se.holderSite, nil
		}
		return false, "", fmt.Errorf("%s %s at %s: %w", doing, name, c.id, err)
	}
	return res.Granted, "", nil
}

// ReleaseLease gives holder's lease on name at the peer up.
func (c *Client) ReleaseLease(ctx context.Context, name, holder string) error {
	path := "leases/" + seg(name) + "?" + url.Values{"holder": {holder}}.Encode()
	if err := c.call(ctx, http.MethodDelete, path, nil, nil, maxAnswer); err != nil {
		return fmt.Errorf("releasing the lease on %s at %s: %w", name, c.id, err)
	}
	return nil
}

// newHTTPClient returns an HTTP client that trusts roots (nil: the
// system's).
func newHTTPClient(roots *x509.CertPool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	// An inventory exchange pulls pullWorkers certificates from a peer at
	// once: each keeps its connection instead of a TLS handshake per pull.
	t.MaxIdleConnsPerHost = 2 * pullWorkers
	return &http.Client{Transport: t}
}

// noRedirects makes a redirect the answer, which call turns into an error.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// seg escapes one path segment. Names and tokens in normal form need no
// escaping; anything else must not change the route.
func seg(s string) string { return url.PathEscape(s) }

// statusOf returns the status of a StatusError in err's chain, or 0.
func statusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// call sends one signed request to path (below PathPrefix) with in as its
// JSON body (nil: none) and decodes a 2xx answer of at most limit bytes into
// out (nil: the answer is discarded). A 4xx or 5xx answer is a *StatusError.
func (c *Client) call(ctx context.Context, method, path string, in, out any, limit int64) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+PathPrefix+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := c.signer.Sign(req, body, c.clock.Now()); err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if int64(len(answer)) > limit {
		return fmt.Errorf("%w: over %d bytes", errAnswerTooLarge, limit)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		se := &StatusError{Peer: c.id, Method: method, Path: strings.SplitN(path, "?", 2)[0], Status: resp.StatusCode}
		var eb struct {
			ErrorBody
			HolderSite string `json:"holder_site"`
		}
		if json.Unmarshal(answer, &eb) == nil && eb.Error != "" {
			se.Message, se.holderSite = eb.Error, eb.HolderSite
		} else {
			se.Message = strings.TrimSpace(string(answer[:min(len(answer), 200)]))
		}
		return se
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("decoding the answer: %w", err)
		}
	}
	return nil
}
