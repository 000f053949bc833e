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
