package acmeclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
)

func get(t *testing.T, client *http.Client, url string) error {
	t.Helper()
	resp, err := client.Get(url)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET %s answered %s, want a transport error", url, resp.Status)
	}
	return fmt.Errorf("obtaining certificate for a.test: creating the order: %w", err)
}

// listen accepts connections on a free loopback port, hands each to handle
// in its own goroutine, and returns the port's address.
func listen(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

func TestTransportFailuresAreOutagesNamedByTheirCause(t *testing.T) {
	client, err := httpClient(nil)
	if err != nil {
		t.Fatal(err)
	}

	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "https://" + ln.Addr().String() + "/dir"
	ln.Close()
	outage := AsOutage(get(t, client, refusedURL), "https://ca.example/dir")
	if outage == nil || outage.Error() != "CA unreachable: connection refused at "+refusedURL {
		t.Errorf("refused: %v", outage)
	}

	// Accepts and never answers: bounded by the TLS handshake timeout.
	held := make(chan struct{})
	defer close(held)
	hang := listen(t, func(c net.Conn) { <-held; c.Close() })
	short := client.Transport.(*http.Transport).Clone()
	short.TLSHandshakeTimeout = 200 * time.Millisecond
	hangURL := "https://" + hang + "/dir"
	outage = AsOutage(get(t, &http.Client{Transport: short}, hangURL), "")
	if outage == nil || outage.Error() != "CA not answering: TLS handshake timed out at "+hangURL {
		t.Errorf("hanging: %v", outage)
	}
	if !strings.Contains(errors.Unwrap(outage).Error(), "obtaining certificate for a.test") {
		t.Errorf("the wrapped error is lost: %v", errors.Unwrap(outage))
	}

	// Accepts and closes at once.
	closing := listen(t, func(c net.Conn) { c.Close() })
	outage = AsOutage(get(t, client, "https://"+closing+"/dir"), "")
	if outage == nil || !strings.HasPrefix(outage.Error(), "CA unreachable: ") {
		t.Errorf("closing: %v", outage)
	}
}

func TestServerErrorsAreOutagesAndRefusalsAreNot(t *testing.T) {
	wrap := func(err error) error {
		return fmt.Errorf("obtaining certificate for a.test: finalizing the order: %w", err)
	}
	internal := wrap(&acme.ProblemDetails{HTTPStatus: 503, Type: "urn:ietf:params:acme:error:serverInternal",
		URL: "https://ca.example/finalize/1"})
	if o := AsOutage(internal, "https://ca.example/dir"); o == nil ||
		o.Error() != "CA failing: HTTP 503 serverInternal at https://ca.example/finalize/1" {
		t.Errorf("503 problem: %v", o)
	}
	html := wrap(fmt.Errorf("502 ::POST :: https://ca.example/new-order :: %w :: <html>bad gateway</html>",
		json.Unmarshal([]byte("<html>"), new(any))))
	if o := AsOutage(html, ""); o == nil || o.Error() != "CA failing: HTTP 502 at https://ca.example/new-order" {
		t.Errorf("502 page: %v", o)
	}
	for _, notOutage := range []error{
		wrap(&acme.ProblemDetails{HTTPStatus: 403, Type: "urn:ietf:params:acme:error:unauthorized"}),
		wrap(&acme.ProblemDetails{HTTPStatus: 429, Type: acme.RateLimitedErr}),
		wrap(fmt.Errorf("400 ::POST :: https://ca.example/x :: %w :: nope", errors.New("bad json"))),
		wrap(context.DeadlineExceeded),
		errors.New("reading the failure record: OOM command not allowed"),
		nil,
	} {
		if o := AsOutage(notOutage, "https://ca.example/dir"); o != nil {
			t.Errorf("%v: read as an outage: %v", notOutage, o)
		}
	}
}

func TestIsOutageNeedsEveryCAToBeDown(t *testing.T) {
	down := &OutageError{Reason: "CA unreachable: connection refused at https://a/dir"}
	refused := &acme.ProblemDetails{HTTPStatus: 400, Type: "urn:ietf:params:acme:error:rejectedIdentifier"}
	cases := []struct {
		err  error
		want bool
	}{
		{down, true},
		{fmt.Errorf("issuing: %w", down), true},
		{errors.Join(down, fmt.Errorf("second CA: %w", down)), true},
		{errors.Join(down, refused), false},
		{errors.Join(refused), false},
		{refused, false},
		{nil, false},
	}
	for _, c := range cases {
		if got := IsOutage(c.err); got != c.want {
			t.Errorf("IsOutage(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestProbeAsksForTheDirectory(t *testing.T) {
	status := http.StatusServiceUnavailable
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dir" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	c := &Client{cfg: Config{DirectoryURL: srv.URL + "/dir", HTTPClient: srv.Client()}}
	err := c.Probe(context.Background())
	var outage *OutageError
	if !errors.As(err, &outage) || outage.Error() != "CA failing: HTTP 503 at "+srv.URL+"/dir" {
		t.Errorf("503: %v", err)
	}
	status = http.StatusOK
	if err := c.Probe(context.Background()); err != nil {
		t.Errorf("200: %v", err)
	}
}

// A nonce request that gets no answer reaches the order as text only: lego
// wraps it with %w, then go-jose with %v, which ends the chain. It is still
// an outage, named by its cause; the same text with another cause is not.
func TestFlattenedNonceFailuresAreOutages(t *testing.T) {
	flatten := func(err error) error {
		nonce := fmt.Errorf("failed to get nonce from HTTP HEAD: %w", err)
		return fmt.Errorf("obtaining certificate for a.test: authorizing a.test: %w",
			fmt.Errorf("go-jose/go-jose: Error generating nonce: %v", nonce))
	}
	hanging := listen(t, func(c net.Conn) { time.Sleep(5 * time.Second); c.Close() })
	client := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 200 * time.Millisecond}}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		addr, want string
	}{
		{hanging, "CA not answering: no response in time at https://ca.example/dir"},
		{refused, "CA unreachable: connection refused at https://ca.example/dir"},
	} {
		resp, err := client.Head("http://" + tc.addr + "/nonce-plz")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("HEAD %s answered %s, want a transport error", tc.addr, resp.Status)
		}
		flat := flatten(err)
		var ue interface{ Timeout() bool }
		if errors.As(flat, &ue) {
			t.Fatalf("%v: the chain still holds the transport error; the test proves nothing", flat)
		}
		if o := AsOutage(flat, "https://ca.example/dir"); o == nil || o.Error() != tc.want {
			t.Errorf("%v: read as %v, want %q", flat, o, tc.want)
		}
	}
	if o := AsOutage(flatten(context.Canceled), "https://ca.example/dir"); o != nil {
		t.Errorf("a cancelled nonce request read as an outage: %v", o)
	}
	if o := AsOutage(flatten(errors.New("bad nonce header")), "https://ca.example/dir"); o != nil {
		t.Errorf("a nonce request that got an answer read as an outage: %v", o)
	}
}
