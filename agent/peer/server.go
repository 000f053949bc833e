package peer

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/store"
)

// MaxLeaseTTL caps the TTL of a lease a peer site takes or extends, so a
// holder that dies blocks the name for a bounded time whatever it asked for.
const MaxLeaseTTL = 300 * time.Second

// Timeouts and limits of the peer API's HTTPS server. Every answer is one
// record or one inventory page at most.
const (
	serverReadHeaderTimeout = 10 * time.Second
	serverReadTimeout       = 30 * time.Second
	serverWriteTimeout      = 60 * time.Second
	serverIdleTimeout       = 120 * time.Second
	serverMaxHeaderBytes    = 16 << 10
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Site is this site's id, as the peers know it. Required.
	Site string
	// Secret is the fleet's shared secret, at least MinSecretLen bytes.
	// Required.
	Secret []byte
	// Peers are the ids of the peer sites allowed to call. Required: a
	// request signed by any other site is refused.
	Peers []string
	// Store is this site's Redis. Required.
	Store *store.Store
	// Logger receives refused requests (Warn) and the writes peers made
	// (Info). Default: slog.Default().
	Logger *slog.Logger
	// Clock checks the requests' timestamps and the records' validity.
	// Default: the system clock.
	Clock clock.Clock
}

// Server answers the peer API of docs/peers.md for one site: every request
// is read up to MaxBody, verified, checked against replays, then routed.
// It is an http.Handler; Start runs it on its own HTTPS listener.
type Server struct {
	cfg   ServerConfig
	peers map[string]bool

	mux *http.ServeMux

	mu  sync.Mutex
	srv *http.Server
	ln  net.Listener
}

// NewServer checks cfg and returns a server for it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := CheckSiteID(cfg.Site); err != nil {
		return nil, fmt.Errorf("the peer API's site: %w", err)
	}
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("the peer secret has %d bytes; at least %d are needed", len(cfg.Secret), MinSecretLen)
	}
	if len(cfg.Peers) == 0 {
		return nil, errors.New("the peer API needs at least one peer site")
	}
	if cfg.Store == nil {
		return nil, errors.New("the peer API needs a store")
	}
	peers := make(map[string]bool, len(cfg.Peers))
	for _, p := range cfg.Peers {
		if err := CheckSiteID(p); err != nil {
			return nil, fmt.Errorf("peer %q: %w", p, err)
		}
		if p == cfg.Site {
			return nil, fmt.Errorf("peer %s is this site", p)
		}
		peers[p] = true
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	srv := &Server{cfg: cfg, peers: peers}
	srv.mux = srv.routes()
	return srv, nil
}

// Start serves the API over HTTPS (TLS 1.2 and later) on addr with the
// certificate and key in certFile and keyFile. It returns once the listener
// is open (Addr tells where) and serves until Shutdown.
func (s *Server) Start(addr, certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("loading the peer API's certificate: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("the peer API is already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for peer sites on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           s,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: serverReadHeaderTimeout,
		ReadTimeout:       serverReadTimeout,
		WriteTimeout:      serverWriteTimeout,
		IdleTimeout:       serverIdleTimeout,
		MaxHeaderBytes:    serverMaxHeaderBytes,
		// Failed handshakes are mostly scanners; a peer that cannot connect
		// reports it on its side.
		ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
	}
	s.srv, s.ln = srv, ln
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("the peer API stopped", "addr", ln.Addr().String(), "error", err)
		}
	}()
	return nil
}

// Addr returns the address Start listens on, or "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting requests and waits for those in flight until ctx
// ends. It does nothing before Start.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// exchange is one request being answered.
type exchange struct {
	s    *Server
	w    http.ResponseWriter
	r    *http.Request
	site string // as claimed until verified
	now  time.Time
	body []byte // read in full before the signature is checked
}

// ServeHTTP answers one request of the peer API. Nothing is written to the
// store before the request is verified and its nonce found fresh.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Records carry private keys: no cache may keep an answer.
	w.Header().Set("Cache-Control", "no-store")
	x := &exchange{s: s, w: w, r: r, site: r.Header.Get(HeaderSite), now: s.cfg.Clock.Now()}
	if r.ContentLength > MaxBody {
		x.refuse(http.StatusRequestEntityTooLarge, "the body is too large", nil)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			x.refuse(http.StatusRequestEntityTooLarge, "the body is too large", nil)
		} else {
			x.refuse(http.StatusBadRequest, "the body could not be read", err)
		}
		return
	}
	signed, err := Verify(r, body, s.cfg.Secret, s.peers, x.now)
	if err != nil {
		x.refuse(http.StatusUnauthorized, authReason(err), err)
		return
	}
	x.site = signed.Site
	fresh, err := s.cfg.Store.SeenNonce(r.Context(), signed.Site, signed.Nonce)
	if err != nil {
		x.fail(err)
		return
	}
	if !fresh {
		x.refuse(http.StatusUnauthorized, "replayed", ErrReplayed)
		return
	}
	x.body = body
	x.route()
}

// authReason is the short reason a refused signature is answered with: enough
// for an operator to fix a configuration, nothing about the expected values.
func authReason(err error) string {
	switch {
	case errors.Is(err, ErrUnknownSite):
		return "unknown site"
	case errors.Is(err, ErrBadSignature):
		return "bad signature"
	case errors.Is(err, ErrStale):
		return "stale timestamp"
	default:
		return "not signed"
	}
}

// routes is the peer API: every pattern of docs/peers.md. Go's ServeMux
// matches the escaped path segment by segment before it unescapes the
// wildcards, so an escaped '/' cannot change the route; names must then be in
// normal form and tokens valid, which the handlers check. The patterns
// ending in {$} catch an empty name or token, a malformed request rather
// than an unknown path.
func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	handle := func(pattern string, h func(x *exchange)) {
		mux.HandleFunc(pattern, func(_ http.ResponseWriter, r *http.Request) {
			x := r.Context().Value(exchangeKey{}).(*exchange)
			x.r = r // with the path's wildcards
			h(x)
		})
	}
	const p = PathPrefix
	handle("GET "+p+"health", (*exchange).health)
	handle("GET "+p+"inventory/digests", (*exchange).digests)
	handle("GET "+p+"inventory/entries", (*exchange).entries)
	handle("PUT "+p+"tokens/{name}/{token}", withToken((*exchange).putToken))
	handle("DELETE "+p+"tokens/{name}/{token}", withToken((*exchange).deleteToken))
	handle(p+"tokens/{name}/{$}", func(x *exchange) { x.refuse(http.StatusBadRequest, "malformed token", nil) })
	handle("POST "+p+"records", (*exchange).records)
	handle("GET "+p+"certs/{name}", withName(true, (*exchange).getCert))
	handle("PUT "+p+"certs/{name}", withName(true, (*exchange).putCert))
	handle("DELETE "+p+"certs/{name}", withName(true, (*exchange).deleteCert))
	handle("POST "+p+"leases/{name}", withName(true, (*exchange).takeLease))
	handle("PUT "+p+"leases/{name}", withName(true, (*exchange).extendLease))
	handle("DELETE "+p+"leases/{name}", withName(true, (*exchange).releaseLease))
	for _, empty := range []string{"certs/{$}", "leases/{$}"} {
		handle(p+empty, func(x *exchange) { x.refuse(http.StatusBadRequest, "the name is not in normal form", nil) })
	}
	return mux
}

// exchangeKey carries the verified exchange from ServeHTTP to the handler
// the ServeMux picked.
type exchangeKey struct{}

// route hands a verified request to its handler, and answers an unknown
// path (404) or method (405, with Allow) as a refusal, in JSON and logged,
// like every other one. A path that is not clean is unknown: the ServeMux
// would redirect it, and a redirected request is not signed for its target.
func (x *exchange) route() {
	r := x.r
	if p := r.URL.EscapedPath(); path.Clean(p) != p && path.Clean(p)+"/" != p {
		x.refuse(http.StatusNotFound, "no such path", nil)
		return
	}
	h, pattern := x.s.mux.Handler(r)
	// The ServeMux would redirect ".../certs" to ".../certs/".
	redirect := strings.HasSuffix(pattern, "/{$}") && !strings.HasSuffix(r.URL.EscapedPath(), "/")
	if pattern == "" || redirect {
		probe := &statusProbe{header: http.Header{}}
		if !redirect {
			h.ServeHTTP(probe, r)
		}
		if probe.status == http.StatusMethodNotAllowed {
			x.w.Header().Set("Allow", probe.header.Get("Allow"))
			x.refuse(http.StatusMethodNotAllowed, "method not allowed", nil)
			return
		}
		x.refuse(http.StatusNotFound, "no such path", nil)
		return
	}
	x.s.mux.ServeHTTP(x.w, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

// statusProbe records what the ServeMux answers a request it has no
// handler for, so that the refusal can be written in the API's own form.
type statusProbe struct {
	header http.Header
	status int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(status int)      { p.status = status }

// withName checks the {name} of the path (wildcard: "*." allowed) before h.
func withName(wildcard bool, h func(x *exchange, name string)) func(*exchange) {
	return func(x *exchange) {
		name := x.r.PathValue("name")
		if err := checkName(name, wildcard); err != nil {
			x.refuse(http.StatusBadRequest, "the name is not in normal form", err)
			return
		}
		h(x, name)
	}
}

// withToken checks the {name} (no wildcard: tokens are for exact names) and
// the {token} of the path before h.
func withToken(h func(x *exchange, name, token string)) func(*exchange) {
	return withName(false, func(x *exchange, name string) {
		token := x.r.PathValue("token")
		if err := checkToken(token); err != nil {
			x.refuse(http.StatusBadRequest, "malformed token", err)
			return
		}
		h(x, name, token)
	})
}

func (x *exchange) health() {
	total, _, err := x.s.cfg.Store.CertCounts(x.r.Context())
	if err != nil {
		x.fail(err)
		return
	}
	x.answer(http.StatusOK, Health{Site: x.s.cfg.Site, Time: x.now.Unix(), Certificates: total})
}

// digests answers the sums of the certificates in windows of the expiry
// index (inventory.go).
func (x *exchange) digests() {
	from, to, ok := x.timeRange()
	if !ok {
		return
	}
	width, ok := x.queryInt("width", 1, 1<<40)
	if !ok {
		return
	}
	windows, err := x.s.cfg.Store.InventoryDigests(x.r.Context(), from, to, width)
	switch {
	case errors.Is(err, store.ErrTooManyWindows):
		x.refuse(http.StatusBadRequest, "too many windows: ask for a wider width or a shorter range", nil)
		return
	case err != nil:
		x.fail(err)
		return
	}
	x.answer(http.StatusOK, InventoryDigests{Site: x.s.cfg.Site, Width: width, Windows: windowDigests(windows)})
}

// entries answers a page of the certificates and tombstones of a range of
// the expiry index.
func (x *exchange) entries() {
	from, to, ok := x.timeRange()
	if !ok {
		return
	}
	offset, ok := x.queryInt("offset", 0, 1<<40)
	if !ok {
		return
	}
	limit, ok := x.queryInt("limit", 1, MaxInventoryPage)
	if !ok {
		return
	}
	ctx, st := x.r.Context(), x.s.cfg.Store
	certs, moreCerts, err := st.InventoryPage(ctx, from, to, offset, limit)
	if err != nil {
		x.fail(err)
		return
	}
	tombs, moreTombs, err := st.TombstonesPage(ctx, max(from, x.now.Unix()), to, offset, limit)
	if err != nil {
		x.fail(err)
		return
	}
	page := InventoryPage{Site: x.s.cfg.Site, More: moreCerts || moreTombs,
		Certificates: make([]InventoryEntry, 0, len(certs)), Tombstones: make([]Tombstone, 0, len(tombs))}
	for _, c := range certs {
		page.Certificates = append(page.Certificates, InventoryEntry{Name: c.Name, Names: c.Names,
			Fingerprint: c.Fingerprint, NotBefore: c.NotBefore.Unix(), NotAfter: c.NotAfter.Unix()})
	}
	for _, t := range tombs {
		page.Tombstones = append(page.Tombstones, Tombstone{Name: t.Name, Fingerprint: t.Fingerprint, Until: t.Until.Unix()})
	}
	x.answer(http.StatusOK, page)
}

// timeRange reads from (required) and to (optional, 0: no end) of an
// inventory query, in Unix seconds.
func (x *exchange) timeRange() (from, to int64, ok bool) {
	if from, ok = x.queryInt("from", 0, 1<<40); !ok {
		return 0, 0, false
	}
	if !x.r.URL.Query().Has("to") {
		return from, 0, true
	}
	if to, ok = x.queryInt("to", from+1, 1<<40); !ok {
		return 0, 0, false
	}
	return from, to, true
}

// queryInt reads one integer query parameter within [lo, hi].
func (x *exchange) queryInt(key string, lo, hi int64) (int64, bool) {
	raw, ok := x.queryValue(key)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < lo || n > hi {
		x.refuse(http.StatusBadRequest, fmt.Sprintf("%s must be an integer from %d to %d", key, lo, hi), nil)
		return 0, false
	}
	return n, true
}

func (x *exchange) putToken(name, token string) {
	var push TokenPush
	if !x.decode(&push) {
		return
	}
	if err := checkKeyAuthorization(token, push.KeyAuthorization); err != nil {
		x.refuse(http.StatusBadRequest, "malformed key authorization", err)
		return
	}
	if push.TTLSeconds < 1 {
		x.refuse(http.StatusBadRequest, "ttl_seconds must be positive", nil)
		return
	}
	ttl := capSeconds(push.TTLSeconds, MaxTokenTTL)
	if err := x.s.cfg.Store.PutTokenFor(x.r.Context(), name, token, push.KeyAuthorization, ttl); err != nil {
		x.fail(err)
		return
	}
	x.s.cfg.Logger.Debug("stored an HTTP-01 token from a peer site", "site", x.site, "name", name, "ttl", ttl)
	x.answer(http.StatusNoContent, nil)
}

func (x *exchange) deleteToken(name, token string) {
	if err := x.s.cfg.Store.DeleteToken(x.r.Context(), name, token); err != nil {
		x.fail(err)
		return
	}
	x.answer(http.StatusNoContent, nil)
}

func (x *exchange) getCert(name string) {
	rec, err := x.s.cfg.Store.GetCert(x.r.Context(), name)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrCorrupt):
		// Not a refusal: the peer asks whether this site holds one.
		x.answer(http.StatusNotFound, ErrorBody{Error: "no certificate for " + name})
	case err != nil:
		x.fail(err)
	default:
		x.answer(http.StatusOK, RecordOf(rec))
	}
}

// recordsAnswerBudget is about how many bytes of records one answer to
// POST records holds (at least one record, which is under MaxBody): the
// caller asks again for the names left out.
const recordsAnswerBudget = 2 << 20

// records answers the records held for many names at once, read in one
// round trip, as getCert answers each.
func (x *exchange) records() {
	var req RecordsRequest
	if !x.decode(&req) {
		return
	}
	if len(req.Names) == 0 || len(req.Names) > MaxRecordsAsked {
		x.refuse(http.StatusBadRequest, fmt.Sprintf("ask for 1 to %d names", MaxRecordsAsked), nil)
		return
	}
	for _, name := range req.Names {
		if err := checkName(name, true); err != nil {
			x.refuse(http.StatusBadRequest, "the name is not in normal form", err)
			return
		}
	}
	recs, errs, err := x.s.cfg.Store.GetCerts(x.r.Context(), req.Names)
	if err != nil {
		x.fail(err)
		return
	}
	res := Records{Site: x.s.cfg.Site, Records: make([]NamedRecord, 0, len(recs))}
	size := 0
	for i, rec := range recs {
		nr := NamedRecord{Name: req.Names[i]}
		if errs[i] == nil {
			r := RecordOf(rec)
			nr.Record = &r
			size += len(r.FullChain) + len(r.Key) + len(r.CA) + len(r.CertURL)
		}
		if size > recordsAnswerBudget && len(res.Records) > 0 {
			break
		}
		res.Records = append(res.Records, nr)
	}
	x.answer(http.StatusOK, res)
}

func (x *exchange) putCert(name string) {
	var r Record
	if !x.decode(&r) {
		return
	}
	res, err := Accept(x.r.Context(), x.s.cfg.Store, name, r, x.now)
	switch {
	case errors.Is(err, ErrInvalidRecord):
		x.refuse(http.StatusUnprocessableEntity, err.Error(), nil)
		return
	case err != nil:
		x.fail(err)
		return
	}
	if res.Stored {
		x.s.cfg.Logger.Info("stored a certificate from a peer site", "site", x.site, "name", name)
	}
	x.answer(http.StatusOK, res)
}

func (x *exchange) deleteCert(name string) {
	fingerprint, ok := x.queryValue("fingerprint")
	if !ok {
		return
	}
	if len(fingerprint) != 64 || strings.Trim(fingerprint, "0123456789abcdef") != "" {
		x.refuse(http.StatusBadRequest, "the fingerprint is not 64 lowercase hex digits", nil)
		return
	}
	deleted, tombstoned, err := x.s.cfg.Store.DeleteCertIfFingerprint(x.r.Context(), name, fingerprint)
	if err != nil {
		x.fail(err)
		return
	}
	log := x.s.cfg.Logger.Info
	if !tombstoned {
		// Not held here, and the tombstones are full (see
		// store.UnknownTombstoneRoom): a flood of deletions would show here.
		log = x.s.cfg.Logger.Warn
	}
	log("a peer site deleted a certificate", "site", x.site, "name", name,
		"fingerprint", fingerprint, "held", deleted, "tombstoned", tombstoned)
	x.answer(http.StatusOK, DeleteResult{Deleted: deleted})
}

func (x *exchange) takeLease(name string) {
	x.leaseWith(name, x.s.cfg.Store.TakeLease)
}

func (x *exchange) extendLease(name string) {
	x.leaseWith(name, x.s.cfg.Store.ExtendLease)
}

// leaseWith takes or extends the lease on name for the holder of the body.
// A conflict names the site that holds the name, so that sites racing for a
// new name can tell who gives way (lease.go).
func (x *exchange) leaseWith(name string, op func(ctx context.Context, name, holder string, ttl time.Duration) error) {
	var req LeaseRequest
	if !x.decode(&req) || !x.checkHolder(req.Holder) {
		return
	}
	if req.TTLSeconds < 1 {
		x.refuse(http.StatusBadRequest, "ttl_seconds must be positive", nil)
		return
	}
	ctx := x.r.Context()
	err := op(ctx, name, req.Holder, capSeconds(req.TTLSeconds, MaxLeaseTTL))
	switch {
	case errors.Is(err, store.ErrLockHeld), errors.Is(err, store.ErrLockLost):
		// Not a refusal of the request: the name is someone else's now.
		x.answer(http.StatusConflict, LeaseResult{Error: "the name is leased to another holder",
			HolderSite: x.holderSite(ctx, name)})
	case err != nil:
		x.fail(err)
	default:
		x.answer(http.StatusOK, LeaseResult{Granted: true})
	}
}

// holderSite is the site whose agent holds name's lease here: the site part
// of a peer's "<site>/<random>" holder, this site for one of its own agents,
// "" when nobody holds it any more (or Redis does not say).
func (x *exchange) holderSite(ctx context.Context, name string) string {
	holder, err := x.s.cfg.Store.LeaseHolder(ctx, name)
	if err != nil || holder == "" {
		return ""
	}
	if site, _, ok := strings.Cut(holder, "/"); ok {
		return site
	}
	return x.s.cfg.Site
}

func (x *exchange) releaseLease(name string) {
	holder, ok := x.queryValue("holder")
	if !ok || !x.checkHolder(holder) {
		return
	}
	if err := x.s.cfg.Store.ReleaseLease(x.r.Context(), name, holder); err != nil {
		x.fail(err)
		return
	}
	x.answer(http.StatusNoContent, nil)
}

// capSeconds is seconds as a duration, at most limit. It compares before it
// multiplies: a count past the range of time.Duration would wrap to a
// negative TTL, which Redis takes for no expiry (a SET) or a deletion.
func capSeconds(seconds int, limit time.Duration) time.Duration {
	if seconds >= int(limit/time.Second) {
		return limit
	}
	return time.Duration(seconds) * time.Second
}

// checkHolder accepts "<signing site>/<1 to 64 base64url characters>": a
// site takes leases for itself only.
func (x *exchange) checkHolder(holder string) bool {
	random, ok := strings.CutPrefix(holder, x.site+"/")
	if !ok || len(random) == 0 || len(random) > 64 || !isBase64URL(random) {
		x.refuse(http.StatusBadRequest, "the holder must be the signing site, '/' and 1 to 64 base64url characters", nil)
		return false
	}
	return true
}

// queryValue returns the one value of a query parameter, refusing the
// request when it is missing or repeated.
func (x *exchange) queryValue(key string) (string, bool) {
	vals := x.r.URL.Query()[key]
	if len(vals) != 1 {
		x.refuse(http.StatusBadRequest, "the query needs one "+key, nil)
		return "", false
	}
	return vals[0], true
}

func (x *exchange) decode(v any) bool {
	if err := json.Unmarshal(x.body, v); err != nil {
		x.refuse(http.StatusBadRequest, "the body is not the expected JSON", err)
		return false
	}
	return true
}

// refuse answers status with reason and logs the refusal, with the cause
// when there is one. The log never holds a body or a token.
func (x *exchange) refuse(status int, reason string, cause error) {
	args := []any{"remote", x.r.RemoteAddr, "site", truncate(x.site, 64), "method", x.r.Method,
		"path", logPath(x.r.URL), "status", status, "reason", reason}
	if cause != nil {
		args = append(args, "error", cause)
	}
	x.s.cfg.Logger.Warn("refused a peer request", args...)
	x.answer(status, ErrorBody{Error: reason})
}

// fail answers a store failure with 503: the request may succeed later.
func (x *exchange) fail(err error) {
	x.s.cfg.Logger.Error("answering a peer request", "remote", x.r.RemoteAddr, "site", x.site,
		"method", x.r.Method, "path", logPath(x.r.URL), "error", err)
	x.answer(http.StatusServiceUnavailable, ErrorBody{Error: "this site's store is unavailable"})
}

// answer writes v as JSON with status (nil: no body).
func (x *exchange) answer(status int, v any) {
	if v == nil {
		x.w.WriteHeader(status)
		return
	}
	data, err := json.Marshal(v)
	if err != nil {
		x.s.cfg.Logger.Error("encoding a peer answer", "error", err)
		x.w.WriteHeader(http.StatusInternalServerError)
		return
	}
	x.w.Header().Set("Content-Type", "application/json")
	x.w.WriteHeader(status)
	_, _ = x.w.Write(append(data, '\n'))
}

// logPath is the request's path for a log line: tokens are left out, and a
// long path is cut.
func logPath(u *url.URL) string {
	p := u.EscapedPath()
	if rest, ok := strings.CutPrefix(p, PathPrefix+"tokens/"); ok {
		name, _, _ := strings.Cut(rest, "/")
		p = PathPrefix + "tokens/" + name + "/…"
	}
	return truncate(p, 300)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// checkToken accepts an ACME token: 1 to 128 base64url characters.
func checkToken(token string) error {
	if len(token) == 0 || len(token) > 128 || !isBase64URL(token) {
		return errors.New("a token is 1 to 128 base64url characters")
	}
	return nil
}

// checkKeyAuthorization accepts "<token>.<account key thumbprint>" (RFC 8555,
// 8.1), what nginx answers the CA with.
func checkKeyAuthorization(token, keyAuth string) error {
	thumb, ok := strings.CutPrefix(keyAuth, token+".")
	if !ok || len(thumb) == 0 || len(thumb) > 128 || !isBase64URL(thumb) {
		return errors.New("the key authorization is not the token, '.' and a base64url thumbprint")
	}
	return nil
}

func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
