package testenv

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// CAProxy is a reverse proxy in front of Pebble that watches the ACME
// traffic of the agents: which names every order is for and over which span
// of time an agent worked on it, so a test can tell whether a name ever had
// two orders in flight. It can also play a CA outage: while down it accepts
// connections and closes them at once, counting them, so a test sees how
// often the agents try.
//
// Pebble builds its URLs from the request's Host, so with Host kept the
// agents talk to the proxy for every request after the directory.
type CAProxy struct {
	DirectoryURL string // https://127.0.0.1:PORT/dir
	CARootsFile  string // PEM of the CA of the proxy's listener certificate

	mu     sync.Mutex
	orders map[string]*ProxyOrder // by order path (/my-order/ID)
	owner  map[string]string      // authz, challenge, finalize, cert path -> order path

	down         atomic.Bool
	downConnects atomic.Int64
	// hangEnd is closed when a hang ends; nil while the proxy answers.
	hangMu        sync.Mutex
	hangEnd       chan struct{}
	requests      atomic.Int64
	newOrderCalls atomic.Int64
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
	cp := &CAProxy{CARootsFile: caFile, orders: map[string]*ProxyOrder{}, owner: map[string]string{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
			r.Out.Host = r.In.Host // Pebble writes URLs with this host
		},
		Transport:      &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
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
	t.Cleanup(func() { _ = srv.Close() })
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
		if r.URL.Path == "/order-plz" && r.Body != nil {
			// Kept so observe can read the names from the JWS payload.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		}
		next.ServeHTTP(w, r)
	}
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
	var body []byte
	if strings.HasPrefix(path, "/order-plz") || strings.HasPrefix(path, "/my-order/") ||
		strings.HasPrefix(path, "/finalize-order/") || strings.HasPrefix(path, "/authZ/") {
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
	case path == "/order-plz" && resp.StatusCode == http.StatusCreated:
		cp.newOrderCalls.Add(1)
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			return nil
		}
		order = &ProxyOrder{Path: loc.Path, Start: now, Names: orderNames(req)}
		cp.orders[loc.Path] = order
	case strings.HasPrefix(path, "/my-order/"):
		order = cp.orders[path]
	default:
		if owner, ok := cp.owner[path]; ok {
			order = cp.orders[owner]
		}
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
		if doc.Status == "invalid" && !strings.HasPrefix(path, "/authZ/") {
			order.Done, order.Invalid = true, true
		}
	}
	if strings.HasPrefix(path, "/certZ/") && resp.StatusCode == http.StatusOK {
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

// orderNames reads the identifiers from the JWS payload of a newOrder request.
func orderNames(req *http.Request) []string {
	if req.GetBody == nil {
		return nil
	}
	rc, err := req.GetBody()
	if err != nil {
		return nil
	}
	defer rc.Close()
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.NewDecoder(rc).Decode(&jws) != nil {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return nil
	}
	var payload struct {
		Identifiers []struct {
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if json.Unmarshal(raw, &payload) != nil {
		return nil
	}
	var names []string
	for _, id := range payload.Identifiers {
		names = append(names, id.Value)
	}
	sort.Strings(names)
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
