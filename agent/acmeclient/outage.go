package acmeclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"syscall"

	"github.com/go-acme/lego/v4/acme"
)

// OutageError is a failure of the CA as a whole rather than of one order: it
// refused or reset the connection, did not answer in time, or answered with
// a server error (5xx). Every order would fail the same way, so the caller
// waits for the CA instead of counting a failure against the name.
//
// Its message names the cause first ("CA unreachable: connection refused at
// https://ca.example/dir"); the error it was read from, with the chain of
// wrappers around it, stays reachable through Unwrap.
type OutageError struct {
	// Reason is the message: what went wrong and at which URL.
	Reason string
	// Err is the error the outage was read from (nil when it was restored
	// from the fleet's record of the CA's state).
	Err error
}

func (e *OutageError) Error() string { return e.Reason }

func (e *OutageError) Unwrap() error { return e.Err }

// AsOutage returns err as an *OutageError when it says the CA is down, and
// nil when it is about the order (a problem document below 500, a bad CSR,
// a rate limit) or about something else (Redis, a cancelled context).
// directory names the CA when the error carries no URL.
func AsOutage(err error, directory string) *OutageError {
	if err == nil {
		return nil
	}
	var outage *OutageError
	if errors.As(err, &outage) {
		return outage
	}
	if reason := outageReason(err); reason != "" {
		at := directory
		var ue *url.Error
		var problem *acme.ProblemDetails
		switch {
		case errors.As(err, &ue) && ue.URL != "":
			at = ue.URL
		case errors.As(err, &problem) && problem.URL != "":
			at = problem.URL
		default:
			if m := legoStatusLine.FindStringSubmatch(err.Error()); m != nil {
				at = m[2]
			}
		}
		return &OutageError{Reason: reason + " at " + at, Err: err}
	}
	return nil
}

// IsOutage reports whether err says the CA is down. For an error joining
// the attempts at several CAs (errors.Join), every attempt must say so: when
// one CA refused the order itself, the order failed for the name.
func IsOutage(err error) bool {
	if err == nil {
		return false
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		if _, single := err.(*OutageError); !single {
			errs := joined.Unwrap()
			if len(errs) == 0 {
				return false
			}
			for _, e := range errs {
				if !IsOutage(e) {
					return false
				}
			}
			return true
		}
	}
	var outage *OutageError
	if errors.As(err, &outage) {
		return true
	}
	if u, ok := err.(interface{ Unwrap() error }); ok {
		return IsOutage(u.Unwrap())
	}
	return false
}

// outageError returns err as an *OutageError when it is one, else err: the
// errors of orders and connections go through it so that an outage is
// reported by its cause.
func outageError(err error, directory string) error {
	if outage := AsOutage(err, directory); outage != nil {
		return outage
	}
	return err
}

// legoStatusLine matches lego's message for an error answer that is not a
// problem document (an HTML page from a load balancer): "503 ::POST :: URL ::".
var legoStatusLine = regexp.MustCompile(`\b([1-5]\d\d) ::\s?[A-Z]+ :: (\S+) ::`)

// outageReason says why err means the CA is down, or "" when it does not.
func outageReason(err error) string {
	var problem *acme.ProblemDetails
	if errors.As(err, &problem) {
		if problem.HTTPStatus >= 500 {
			return fmt.Sprintf("CA failing: HTTP %d %s", problem.HTTPStatus, strings.TrimPrefix(problem.Type, "urn:ietf:params:acme:error:"))
		}
		return ""
	}
	if m := legoStatusLine.FindStringSubmatch(err.Error()); m != nil {
		if m[1][0] == '5' {
			return "CA failing: HTTP " + m[1]
		}
		return ""
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		return flattenedNonceOutage(err.Error())
	}
	if errors.Is(ue.Err, context.Canceled) {
		return "" // a request we cancelled
	}
	// A request that got no answer at all: the transport failed.
	var dnsErr *net.DNSError
	var verifyErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "CA unreachable: connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "CA unreachable: connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "CA unreachable: no route to host"
	case errors.As(err, &dnsErr):
		return "CA unreachable: DNS lookup failed (" + dnsErr.Err + ")"
	case errors.As(err, &verifyErr), errors.As(err, &unknownAuthority):
		return "CA unreachable: its TLS certificate does not verify"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "CA unreachable: connection closed without an answer"
	case errors.As(err, &netErr) && netErr.Timeout():
		return timeoutReason(err.Error())
	}
	return "CA unreachable: " + innermost(ue.Err).Error()
}

// nonceRequestFailed is lego's message for a nonce request (HEAD newNonce)
// that got no answer. go-jose wraps it with %v when it signs a request, so
// the chain ends there and holds no *url.Error: only the text is left.
const nonceRequestFailed = "failed to get nonce from HTTP HEAD: "

// flattenedNonceOutage reads the transport failure out of the text of a
// nonce request's error that go-jose flattened, or "" for any other error.
// A CA that hangs is met this way by every order already running.
func flattenedNonceOutage(msg string) string {
	_, cause, found := strings.Cut(msg, nonceRequestFailed)
	switch {
	case !found || strings.Contains(cause, "context canceled"):
		return ""
	case strings.Contains(cause, "connection refused"):
		return "CA unreachable: connection refused"
	case strings.Contains(cause, "connection reset"):
		return "CA unreachable: connection reset"
	case strings.Contains(cause, "timeout"), strings.Contains(cause, "Timeout"):
		return timeoutReason(cause)
	case strings.Contains(cause, "EOF"):
		return "CA unreachable: connection closed without an answer"
	}
	return ""
}

// timeoutReason names a request that timed out by the step it was in, which
// only the transport's message tells.
func timeoutReason(msg string) string {
	switch {
	case strings.Contains(msg, "TLS handshake timeout"):
		return "CA not answering: TLS handshake timed out"
	case strings.Contains(msg, "awaiting response headers"), strings.Contains(msg, "awaiting headers"):
		return "CA not answering: no response in time"
	case strings.Contains(msg, "dial"):
		return "CA unreachable: connect timed out"
	}
	return "CA not answering: timed out"
}

// innermost follows a chain of single wrappers to its end.
func innermost(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}

// Probe asks the CA for its directory and returns nil when it answers below
// 500, or an *OutageError. It is how the agents find out that a CA marked
// down is back.
func (c *Client) Probe(ctx context.Context) error {
	return probeDirectory(ctx, c.cfg.HTTPClient, c.cfg.DirectoryURL)
}

func probeDirectory(ctx context.Context, client *http.Client, directory string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, directory, nil)
	if err != nil {
		return fmt.Errorf("probing the CA: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return outageError(err, directory)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return &OutageError{Reason: fmt.Sprintf("CA failing: HTTP %d at %s", resp.StatusCode, directory)}
	}
	return nil
}
