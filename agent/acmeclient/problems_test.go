package acmeclient

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"testing"

	"github.com/go-acme/lego/v4/acme"
)

func TestFailedValidationAndUnanswered(t *testing.T) {
	problem := func(typ string) error {
		return fmt.Errorf("validating a.example.com: %w", &acme.ProblemDetails{Type: typ, HTTPStatus: 403})
	}
	refused := &url.Error{Op: "Post", URL: "https://ca/new-order", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	for _, tc := range []struct {
		name                 string
		err                  error
		validation, noAnswer bool
	}{
		{"dns", problem("urn:ietf:params:acme:error:dns"), true, false},
		{"caa", problem("urn:ietf:params:acme:error:caa"), true, false},
		{"rateLimited", problem("urn:ietf:params:acme:error:rateLimited"), false, false},
		{"refused connection", refused, false, true},
		{"known outage, not asked", &OutageError{Reason: "CA unreachable at https://ca/dir"}, false, true},
		{"one CA refused, one answered", errors.Join(refused, problem("urn:ietf:params:acme:error:serverInternal")), false, false},
		{"both CAs unreachable", errors.Join(refused, refused), false, true},
		{"plain error", errors.New("x"), false, false},
	} {
		if got := FailedValidation(tc.err); got != tc.validation {
			t.Errorf("%s: FailedValidation = %v, want %v", tc.name, got, tc.validation)
		}
		if got := Unanswered(tc.err); got != tc.noAnswer {
			t.Errorf("%s: Unanswered = %v, want %v", tc.name, got, tc.noAnswer)
		}
	}
}
