package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// CAProxy is a reverse proxy in front of Pebble that makes it a stricter CA
// and watches the ACME traffic of the agents.
//
// It enforces Let's Encrypt's order and CSR rules that Pebble does not
// (caproxy_rules.go: at most 100 names, a commonName of at most 64 bytes,
// well-formed names, the CSR's names equal to the order's...), answering a
// request that breaks one with Let's Encrypt's problem, so that every order
// through it meets them. It records which names every order is for and over
// which span of time an agent worked on it, so a test can tell whether a name
// ever had two orders in flight. It plays a CA's failures on demand
// (caproxy_faults.go): rateLimited with Retry-After, badNonce, serverInternal,
// requests that hang, and accounts lost in a CA reset. It can also play a CA
// outage: while down it accepts connections and closes them at once, counting
// them, so a test sees how often the agents try.
//
// Pebble builds its URLs from the request's Host, so with Host kept the
// agents talk to the proxy for every request after the directory.
type CAProxy struct {
	DirectoryURL string // https://127.0.0.1:PORT/dir
	CARootsFile  string // PEM of the CA of the proxy's listener certificate

	mu     sync.Mutex
	orders map[string]*ProxyOrder // by order path (/my-order/ID)
	owner  map[string]string      // authz, challenge, finalize, cert path -> order path

	upstream *http.Client // to Pebble, for fresh nonces
	nonceURL string

	faults        []*Fault
	faulted       map[FaultKind]int
	hung          int
	release       chan struct{} // closed to let the hung requests go on
	closed        chan struct{} // closed when the test ends
	accountsReset bool
	reregistered  map[string]bool // account paths registered again since the reset
	refusals      []string

	down         atomic.Bool
	downConnects atomic.Int64
	// hangEnd is closed when a hang of the whole CA (SetHanging) ends; nil
	// while the proxy answers.
	hangMu        sync.Mutex
	hangEnd       chan struct{}
	requests      atomic.Int64
	newOrderCalls atomic.Int64

	guard pebbleGuard
}

// ProxyOrder is one order seen by the proxy.
type ProxyOrder struct {
	Path    string
	Names   []string
	Start   time.Time // the newOrder answer
	Last    time.Time // the last request touching the order, its authorizations or certificate
	Done    bool      // certificate downloaded or order invalid
	Invalid bool
	Certs   int // certificate downloads
}

// StartCAProxy starts the proxy in front of p on a free loopback port.
func StartCAProxy(t testing.TB, p *Pebble) *CAProxy {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, caFile := writePebbleListenerCert(t, dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(p.DirectoryURL)
	if err != nil {
		t.Fatal(err)
	}
	pebbleRoots, err := os.ReadFile(p.CARootsFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pebbleRoots)
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	cp := &CAProxy{CARootsFile: caFile, orders: map[string]*ProxyOrder{}, owner: map[string]string{},
		upstream: &http.Client{Transport: transport, Timeout: 5 * time.Second},
		nonceURL: target.Scheme + "://" + target.Host + pathNewNonce,
		faulted:  map[FaultKind]int{}, release: make(chan struct{}), closed: make(chan struct{})}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
			r.Out.Host = r.In.Host // Pebble writes URLs with this host
		},
		Transport:      transport,
		ModifyResponse: cp.observe,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:   http.HandlerFunc(cp.serve(rp)),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ErrorLog:  nil,
	}
	go func() { _ = srv.ServeTLS(&outageListener{Listener: ln, proxy: cp}, "", "") }()
	t.Cleanup(func() {
		close(cp.closed)
		_ = srv.Close()
		if refused := cp.Refusals(); t.Failed() && len(refused) > 0 {
			t.Logf("the CA proxy refused, as Let's Encrypt would:\n  %s", strings.Join(refused, "\n  "))
		}
	})
	t.Cleanup(func() { cp.SetHanging(false) }) // closes the held connections
	cp.DirectoryURL = "https://" + ln.Addr().String() + target.Path
	return cp
}

func (cp *CAProxy) serve(next http.Handler) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if end := cp.hanging(); end != nil {
			// A connection kept alive from before the hang: no answer
			// until the client gives up or the hang ends, then cut it.
			cp.downConnects.Add(1)
			select {
			case <-end:
			case <-r.Context().Done():
			}
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close()
				}
			}
			return
		}
		if cp.down.Load() {
			// A connection kept alive from before the outage: cut it.
			cp.downConnects.Add(1)
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close()
					return
				}
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		cp.requests.Add(1)
		post, err := readPost(r)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if post != nil {
			// Kept so observe can read what was asked for.
			r = r.WithContext(context.WithValue(r.Context(), postKey{}, post))
		}
		if f := cp.takeFault(r, post); f != nil && cp.playFault(w, r, f) {
			return
		}
		if p := cp.refuse(r, post); p != nil {
			cp.writeProblem(w, p)
			return
		}
		defer cp.guard.enter(r.URL.Path)()
		next.ServeHTTP(w, r)
	}
}

// acmePost is what the proxy reads of a signed ACME request.
type acmePost struct {
	kid     string // the account URL; empty for newAccount (signed with the key itself)
	payload []byte
}

type postKey struct{}

// readPost reads a POST's JWS and puts its body back for Pebble. It returns
// nil for other methods, and an empty acmePost for a body that is no JWS
// (Pebble refuses it).
func readPost(r *http.Request) (*acmePost, error) {
	if r.Method != http.MethodPost || r.Body == nil {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	post := &acmePost{}
	var jws struct {
		Protected string `json:"protected"`
		Payload   string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return post, nil
	}
	var header struct {
		KID string `json:"kid"`
	}
	if raw, err := base64.RawURLEncoding.DecodeString(jws.Protected); err == nil && json.Unmarshal(raw, &header) == nil {
		post.kid = header.KID
	}
	post.payload, _ = base64.RawURLEncoding.DecodeString(jws.Payload)
	return post, nil
}

// refuse returns the problem a Let's Encrypt CA answers the request with
// where Pebble would accept it, or nil: an account lost in a reset, an order
// or a CSR that breaks the rules.
func (cp *CAProxy) refuse(r *http.Request, post *acmePost) *problem {
	if post == nil {
		return nil
	}
	path := r.URL.Path
	cp.mu.Lock()
	lost := cp.lostAccountLocked(post)
	var orderNames []string
	if o := cp.orderOfLocked(path); o != nil {
		orderNames = o.Names
	}
	cp.mu.Unlock()
	if lost != nil {
		return lost
	}
	var p *problem
	switch {
	case path == PathNewOrder:
		p = checkNewOrder(post.payload)
	case strings.HasPrefix(path, PathFinalize):
		p = checkFinalize(post.payload, orderNames)
	}
	if p != nil {
		cp.mu.Lock()
		cp.refusals = append(cp.refusals, fmt.Sprintf("%s %s: %s: %s", r.Method, path, p.Type, p.Detail))
		cp.mu.Unlock()
	}
	return p
}

// Refusals returns, oldest first, every request the proxy refused because it
// broke Let's Encrypt's rules: "POST /order-plz: <problem type>: <detail>".
func (cp *CAProxy) Refusals() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.Clone(cp.refusals)
}

// writeProblem answers with p, and a fresh nonce from Pebble as a CA sends
// with every answer (a client retrying a badNonce uses it).
func (cp *CAProxy) writeProblem(w http.ResponseWriter, p *problem) {
	if nonce := cp.freshNonce(); nonce != "" {
		w.Header().Set("Replay-Nonce", nonce)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func (cp *CAProxy) freshNonce() string {
	resp, err := cp.upstream.Head(cp.nonceURL)
	if err != nil {
		return ""
	}
	resp.Body.Close()
	return resp.Header.Get("Replay-Nonce")
}

// replaceResponse turns Pebble's answer into the problem p.
func replaceResponse(resp *http.Response, p *problem) {
	body, _ := json.Marshal(p)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.StatusCode, resp.Status = p.Status, fmt.Sprintf("%d %s", p.Status, http.StatusText(p.Status))
	resp.ContentLength = int64(len(body))
	resp.Header.Del("Location")
	resp.Header.Set("Content-Type", "application/problem+json")
	resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
}

// urlPath returns the path of an absolute URL, or raw when it does not parse.
func urlPath(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Path
	}
	return raw
}

// outageListener closes every connection at once while the proxy is down.
type outageListener struct {
	net.Listener
	proxy *CAProxy
}

func (l *outageListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return c, err
		}
		if end := l.proxy.hanging(); end != nil {
			// Accepted and never answered, not even the TLS handshake.
			l.proxy.downConnects.Add(1)
			go func() { <-end; _ = c.Close() }()
			continue
		}
		if !l.proxy.down.Load() {
			return c, nil
		}
		l.proxy.downConnects.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, like a port nobody listens on
		}
		_ = c.Close()
	}
}

// SetDown starts or ends an outage: new connections are reset, and a request
// on a connection kept alive from before gets its connection closed.
func (cp *CAProxy) SetDown(down bool) { cp.down.Store(down) }

// SetHanging starts or ends a hang, the CA that accepts connections and
// never answers: new connections get no TLS handshake, requests on
// connections kept alive from before get no response. When it ends, the
// held connections are closed.
func (cp *CAProxy) SetHanging(hang bool) {
	cp.hangMu.Lock()
	defer cp.hangMu.Unlock()
	switch {
	case hang && cp.hangEnd == nil:
		cp.hangEnd = make(chan struct{})
	case !hang && cp.hangEnd != nil:
		close(cp.hangEnd)
		cp.hangEnd = nil
	}
}

func (cp *CAProxy) hanging() chan struct{} {
	cp.hangMu.Lock()
	defer cp.hangMu.Unlock()
	return cp.hangEnd
}

// DownConnects returns how many connections and requests were refused or
// held during outages and hangs: the agents' attempts to reach the CA.
func (cp *CAProxy) DownConnects() int64 { return cp.downConnects.Load() }

// Requests returns how many requests the proxy passed on.
func (cp *CAProxy) Requests() int64 { return cp.requests.Load() }

func (cp *CAProxy) observe(resp *http.Response) error {
	req := resp.Request
	path := req.URL.Path
	now := time.Now()
	post, _ := req.Context().Value(postKey{}).(*acmePost)
	if path == PathNewAccount && post != nil {
		cp.observeNewAccount(resp, post)
	}
	var body []byte
	if strings.HasPrefix(path, PathNewOrder) || strings.HasPrefix(path, pathOrder) ||
		strings.HasPrefix(path, PathFinalize) || strings.HasPrefix(path, PathAuthz) {
		var err error
		if body, err = io.ReadAll(resp.Body); err != nil {
			return err
		}
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var order *ProxyOrder
	switch {
	case path == PathNewOrder && resp.StatusCode == http.StatusCreated:
		cp.newOrderCalls.Add(1)
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			return nil
		}
		order = &ProxyOrder{Path: loc.Path, Start: now}
		if post != nil {
			order.Names = identifierNames(post.payload)
		}
		cp.orders[loc.Path] = order
	default:
		order = cp.orderOfLocked(path)
	}
	if order == nil {
		return nil
	}
	order.Last = now
	var doc struct {
		Status         string   `json:"status"`
		Authorizations []string `json:"authorizations"`
		Finalize       string   `json:"finalize"`
		Certificate    string   `json:"certificate"`
		Challenges     []struct {
			URL string `json:"url"`
		} `json:"challenges"`
	}
	if len(body) > 0 && json.Unmarshal(body, &doc) == nil {
		for _, u := range append(append([]string{doc.Finalize, doc.Certificate}, doc.Authorizations...), challengeURLs(doc.Challenges)...) {
			if pu, err := url.Parse(u); err == nil && pu.Path != "" {
				cp.owner[pu.Path] = order.Path
			}
		}
		if doc.Status == "invalid" && !strings.HasPrefix(path, PathAuthz) {
			order.Done, order.Invalid = true, true
		}
	}
	if strings.HasPrefix(path, PathCert) && resp.StatusCode == http.StatusOK {
		order.Certs++
		order.Done = true
	}
	return nil
}

func challengeURLs(cs []struct {
	URL string `json:"url"`
}) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.URL)
	}
	return out
}

// identifierNames returns the identifiers of a newOrder payload, lowercased,
// once each, sorted.
func identifierNames(payload []byte) []string {
	var req struct {
		Identifiers []acmeIdentifier `json:"identifiers"`
	}
	if json.Unmarshal(payload, &req) != nil {
		return nil
	}
	var names []string
	for _, id := range req.Identifiers {
		if name := strings.ToLower(id.Value); !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// Orders returns a copy of every order seen, oldest first.
func (cp *CAProxy) Orders() []ProxyOrder {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	out := make([]ProxyOrder, 0, len(cp.orders))
	for _, o := range cp.orders {
		out = append(out, *o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Overlaps returns, for each name that had two orders in flight at once, a
// description of the two orders. An order is in flight from the CA's answer
// to newOrder to its last request seen.
func (cp *CAProxy) Overlaps() []string {
	byName := map[string][]ProxyOrder{}
	for _, o := range cp.Orders() {
		for _, n := range o.Names {
			byName[n] = append(byName[n], o)
		}
	}
	var out []string
	for name, os := range byName {
		for i := range os {
			for j := i + 1; j < len(os); j++ {
				a, b := os[i], os[j]
				if a.Start.Before(b.Last) && b.Start.Before(a.Last) {
					out = append(out, name+": "+a.Path+" ["+a.Start.Format("15:04:05.000")+", "+a.Last.Format("15:04:05.000")+
						"] and "+b.Path+" ["+b.Start.Format("15:04:05.000")+", "+b.Last.Format("15:04:05.000")+"]")
				}
			}
		}
	}
	sort.Strings(out)
	return out
}
