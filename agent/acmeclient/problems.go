package acmeclient

import (
	"errors"
	"net"
	"net/url"

	"github.com/go-acme/lego/v4/acme"
)

// The errors of an order read by what they mean to the rate budgets: a
// refused validation counts against a name's failed-validation limit, and
// an order that got no answer at all was not counted by the CA.

// FailedValidation tells a CA's refusal to validate a name (what its
// failed-validation limit counts) from other failures.
func FailedValidation(err error) bool {
	var problem *acme.ProblemDetails
	if !errors.As(err, &problem) || AccountLost(err) {
		// An account the CA refuses is unauthorized too, and no name's fault.
		return false
	}
	switch problem.Type {
	case "urn:ietf:params:acme:error:unauthorized", "urn:ietf:params:acme:error:connection",
		"urn:ietf:params:acme:error:dns", "urn:ietf:params:acme:error:incorrectResponse",
		"urn:ietf:params:acme:error:caa", "urn:ietf:params:acme:error:tls":
		return true
	}
	return false
}

// Unanswered tells an error of calls that got no HTTP answer; for errors
// joined (one per CA), each of them. An error that is one of notAsked (the
// caller's own reasons not to ask) counts as unanswered too.
func Unanswered(err error, notAsked ...error) bool {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs := joined.Unwrap()
		for _, e := range errs {
			if !Unanswered(e, notAsked...) {
				return false
			}
		}
		return len(errs) > 0
	}
	var outage *OutageError
	if errors.As(err, &outage) && outage.Err == nil {
		return true // not asked: the fleet knows the CA is down
	}
	for _, reason := range notAsked {
		if errors.Is(err, reason) {
			return true
		}
	}
	var problem *acme.ProblemDetails
	if errors.As(err, &problem) {
		return false
	}
	var urlErr *url.Error
	var opErr *net.OpError
	return errors.As(err, &urlErr) || errors.As(err, &opErr)
}
