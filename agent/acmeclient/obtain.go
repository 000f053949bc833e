package acmeclient

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/challenge"

	"github.com/certagent/certagent/agent/internal/stages"
)

// Obtain orders one certificate for names (the first is the subject) with a
// new private key, answering each authorization by HTTP-01. It returns when the
// certificate is issued, the CA gives up, or ctx ends.
func (c *Client) Obtain(ctx context.Context, names []string) (*Certificate, error) {
	return c.ObtainWith(ctx, names, OrderOptions{})
}

// ObtainWith is Obtain with per-order options: the certificate it replaces
// (ARI), a profile other than the configured one, and the journal that lets
// the next attempt resume the order.
func (c *Client) ObtainWith(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("obtaining a certificate: no names")
	}
	if len(names) > MaxNamesPerOrder {
		return nil, fmt.Errorf("obtaining certificate for %s: %w (%d asked for)", names[0], ErrTooManyNames, len(names))
	}
	cert, err := c.obtain(ctx, names, opts)
	if err != nil {
		// An outage is about the CA, not the name: it says so first.
		return nil, outageError(fmt.Errorf("obtaining certificate for %s: %w", names[0], err), c.cfg.DirectoryURL)
	}
	return cert, nil
}

// obtain runs the order for names, resuming the one opts.Journal recorded
// when there is one. An order whose validation failed because the token
// store lost the answer or could not serve it (ErrAnswerLost) is followed at
// once by a new one: the name is not at fault, and the failed order is
// invalid now. A second such failure is returned, wrapping ErrAnswerLost.
func (c *Client) obtain(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
	cert, err := c.runOrder(ctx, names, opts)
	if errors.Is(err, ErrAnswerLost) && ctx.Err() == nil {
		cert, err = c.runOrder(ctx, names, opts)
	}
	return cert, err
}

// runOrder resumes the recorded order for names or places a new one (and
// records it), then drives it to a certificate.
func (c *Client) runOrder(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
	journal := opts.Journal
	if journal == nil {
		journal = noJournal{}
	}
	resumed, key, err := c.resume(ctx, names, journal)
	stages.Mark(ctx, "journal_read")
	if err != nil {
		return nil, err
	}
	if resumed != nil {
		return c.complete(ctx, names, *resumed, key, journal)
	}
	order, err := c.newOrder(ctx, names, opts)
	stages.Mark(ctx, "new_order")
	if err != nil {
		return nil, err
	}
	if err := journal.Record(ctx, c.pendingOrder(order, names, "", nil)); err != nil {
		return nil, err
	}
	stages.Mark(ctx, "journal_write")
	return c.complete(ctx, names, order, nil, journal)
}

// newOrder places a new order for names at the CA.
func (c *Client) newOrder(ctx context.Context, names []string, opts OrderOptions) (acme.ExtendedOrder, error) {
	profile := opts.Profile
	if profile == "" {
		profile = c.cfg.Profile
	}
	// lego drops replaces when the CA has no ARI, and retries without it when
	// the CA says the certificate was already replaced.
	order, err := withContext(ctx, func() (acme.ExtendedOrder, error) {
		return c.core.Orders.NewWithOptions(names, &api.OrderOptions{Profile: profile, ReplacesCertID: opts.Replaces})
	})
	if err != nil && opts.Replaces != "" && replacesRejected(err) {
		// A CA that cannot match the replaced certificate (some encode
		// serials with a leading zero byte differently) refuses the whole
		// order. Renewing without the ARI hint beats not renewing; the
		// returned Certificate's empty Replaces tells the caller.
		order, err = withContext(ctx, func() (acme.ExtendedOrder, error) {
			return c.core.Orders.NewWithOptions(names, &api.OrderOptions{Profile: profile})
		})
	}
	if err != nil {
		return acme.ExtendedOrder{}, fmt.Errorf("creating the order: %w", err)
	}
	return order, nil
}

// complete drives order from where it stands to a downloaded certificate:
// authorizations while pending, finalization with key (a new one when nil,
// recorded before the CSR goes out) while ready, polling while processing.
func (c *Client) complete(ctx context.Context, names []string, order acme.ExtendedOrder, key crypto.Signer,
	journal OrderJournal) (*Certificate, error) {
	if order.Status == acme.StatusPending {
		// The key is needed only at finalization: it is made and recorded
		// while the CA validates.
		keyReady := c.keyMeanwhile(ctx, order, names, key, journal)
		err := c.authorizeAll(ctx, order)
		var keyErr error
		key, keyErr = keyReady()
		if err != nil {
			return nil, err
		}
		if keyErr != nil {
			return nil, keyErr
		}
		stages.Mark(ctx, "key")
		order.Status = acme.StatusReady
	}
	if order.Status == acme.StatusReady {
		if key == nil {
			var err error
			if key, err = c.newRecordedKey(ctx, order, names, journal); err != nil {
				return nil, err
			}
			stages.Mark(ctx, "key")
		}
		csr, err := newCSR(names, key)
		if err != nil {
			return nil, err
		}
		finalized, err := withContext(ctx, func() (acme.ExtendedOrder, error) {
			return c.core.Orders.UpdateForCSR(order.Finalize, csr)
		})
		if err != nil {
			return nil, fmt.Errorf("finalizing the order: %w", err)
		}
		finalized.Location = order.Location
		order = finalized
		stages.Mark(ctx, "finalize")
	}
	if order.Status != acme.StatusValid {
		var err error
		if order, err = c.waitOrder(ctx, order.Location); err != nil {
			return nil, err
		}
	}
	chain, err := withContext(ctx, func() ([]byte, error) {
		chain, _, err := c.core.Certificates.Get(order.Certificate, true)
		return chain, err
	})
	stages.Mark(ctx, "download")
	if err != nil {
		return nil, fmt.Errorf("downloading the certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	return &Certificate{
		FullChain: chain,
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CertURL:   order.Certificate,
		KeyType:   keyTypeOf(key),
		Profile:   order.Profile,
		Replaces:  order.Replaces,
	}, nil
}

// newRecordedKey makes the certificate's new key and records it with order:
// a crash after the CSR went out leaves an order only this key can use.
func (c *Client) newRecordedKey(ctx context.Context, order acme.ExtendedOrder, names []string, journal OrderJournal) (crypto.Signer, error) {
	if ctx.Err() != nil {
		return nil, context.Cause(ctx) // cut off: nothing more is recorded
	}
	key, err := generateKey(c.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	if err := journal.Record(ctx, c.pendingOrder(order, names, c.cfg.KeyType, key)); err != nil {
		return nil, err
	}
	return key, nil
}

// keyMeanwhile starts newRecordedKey for an order without a key (key nil)
// and returns what waits for its result: key itself when there is one.
func (c *Client) keyMeanwhile(ctx context.Context, order acme.ExtendedOrder, names []string, key crypto.Signer,
	journal OrderJournal) func() (crypto.Signer, error) {
	if key != nil {
		return func() (crypto.Signer, error) { return key, nil }
	}
	type made struct {
		key crypto.Signer
		err error
	}
	done := make(chan made, 1)
	go func() {
		key, err := c.newRecordedKey(ctx, order, names, journal)
		done <- made{key, err}
	}()
	return func() (crypto.Signer, error) {
		m := <-done
		return m.key, m.err
	}
}

// authorizeAll answers every authorization of order that is not valid yet
// and waits until the order is ready. It polls the order, not each
// authorization: RFC 8555 (section 7.1.6) makes an order ready once all its
// authorizations are valid and invalid once one fails, so one request per
// poll follows them all, and the authorizations' answers are validated at
// the same time instead of one after the other. Only when the order fails is
// each started authorization read again, for its challenge's error.
func (c *Client) authorizeAll(ctx context.Context, order acme.ExtendedOrder) error {
	var started []*startedAuthz
	defer func() {
		// The answers are no longer needed once the order is decided; a
		// failed clean-up only leaves a token that expires by itself or a
		// TXT record that nothing trusts any more.
		for _, a := range started {
			_ = a.solver.CleanUp(a.domain, a.token, a.keyAuth)
		}
	}()
	var retryAfter time.Duration
	for _, authzURL := range order.Authorizations {
		a, err := c.startAuthz(ctx, authzURL)
		if err != nil {
			return err
		}
		if a == nil {
			continue // valid already
		}
		started = append(started, a)
		retryAfter = max(retryAfter, a.retryAfter)
	}
	if len(started) == 0 {
		return nil
	}
	err := c.readyPace.Poll(ctx, retryAfter, func() (bool, error) {
		o, err := withContext(ctx, func() (acme.ExtendedOrder, error) { return c.core.Orders.Get(order.Location) })
		stages.Mark(ctx, "poll_ready")
		if err != nil {
			return false, fmt.Errorf("authorizing %s: polling the order: %w", started[0].domain, err)
		}
		switch o.Status {
		case acme.StatusPending:
			return false, nil
		case acme.StatusInvalid:
			return false, c.authzFailure(ctx, started, o)
		}
		return true, nil // ready, or further along
	})
	return err
}

// startedAuthz is an authorization whose answer is published and whose
// validation was asked for.
type startedAuthz struct {
	url, domain, challType, token, keyAuth string
	solver                                 challenge.Provider
	presented                              time.Time
	retryAfter                             time.Duration // the CA's first Retry-After, if any
}

// startAuthz publishes the answer to the authorization at authzURL (HTTP-01
// unless it needs DNS-01) and asks the CA to validate it; nil when the
// authorization is valid already.
func (c *Client) startAuthz(ctx context.Context, authzURL string) (*startedAuthz, error) {
	authz, err := withContext(ctx, func() (acme.Authorization, error) { return c.core.Authorizations.Get(authzURL) })
	stages.Mark(ctx, "authz_read")
	if err != nil {
		return nil, fmt.Errorf("reading authorization: %w", err)
	}
	if authz.Status == acme.StatusValid {
		return nil, nil
	}
	domain := authz.Identifier.Value
	// Wildcards can only be validated through DNS; the rules pick DNS-01
	// for other names too (names nginx does not answer HTTP for).
	challType, solver := "http-01", c.solver
	if authz.Wildcard || c.cfg.DNSNames.Match(domain) {
		if c.cfg.DNSProvider == nil {
			return nil, fmt.Errorf("authorizing %s: it needs DNS-01 and no DNS provider is configured", domain)
		}
		challType, solver = "dns-01", c.cfg.DNSProvider
	}
	var chall *acme.Challenge
	for i := range authz.Challenges {
		if authz.Challenges[i].Type == challType {
			chall = &authz.Challenges[i]
		}
	}
	if chall == nil {
		return nil, fmt.Errorf("authorizing %s: the CA offers no %s challenge", domain, challType)
	}
	keyAuth, err := c.core.GetKeyAuthorization(chall.Token)
	if err != nil {
		return nil, fmt.Errorf("authorizing %s: %w", domain, err)
	}
	a := &startedAuthz{url: authzURL, domain: domain, challType: challType, token: chall.Token, keyAuth: keyAuth,
		solver: solver, presented: time.Now()}
	if err := solver.Present(domain, chall.Token, keyAuth); err != nil {
		return nil, fmt.Errorf("authorizing %s: presenting the %s answer: %w", domain, challType, err)
	}
	stages.Mark(ctx, "answer")
	if challType == "dns-01" {
		err := c.waitTXT(ctx, domain, keyAuth)
		// The DNS provider's time, not the CA's (manager.Concurrency).
		NoteAnswerTime(ctx, time.Since(a.presented))
		if err != nil {
			_ = solver.CleanUp(domain, chall.Token, keyAuth)
			return nil, fmt.Errorf("authorizing %s: %w", domain, err)
		}
	}
	// A resumed order's challenge may be under validation already: the CA
	// refuses to start it twice, and the answer is published again above.
	if chall.Status == acme.StatusPending || chall.Status == "" {
		resp, err := withContext(ctx, func() (acme.ExtendedChallenge, error) { return c.core.Challenges.New(chall.URL) })
		if err != nil {
			_ = solver.CleanUp(domain, chall.Token, keyAuth)
			return nil, fmt.Errorf("authorizing %s: starting validation: %w", domain, err)
		}
		if d, err := api.ParseRetryAfter(resp.RetryAfter); err == nil && d > 0 {
			a.retryAfter = min(d, 30*time.Second)
		}
		stages.Mark(ctx, "validate")
	}
	return a, nil
}

// authzFailure is the error of an invalid order: the error of the first
// authorization that failed (wrapping ErrAnswerLost when the token store
// lost or could not serve its answer), else the order's own.
func (c *Client) authzFailure(ctx context.Context, started []*startedAuthz, order acme.ExtendedOrder) error {
	for _, a := range started {
		authz, err := withContext(ctx, func() (acme.Authorization, error) { return c.core.Authorizations.Get(a.url) })
		if err != nil {
			return fmt.Errorf("authorizing %s: reading the failed authorization: %w", a.domain, err)
		}
		if authz.Status == acme.StatusValid || authz.Status == acme.StatusPending {
			continue
		}
		err = fmt.Errorf("authorizing %s: authorization is %s", a.domain, authz.Status)
		for _, ch := range authz.Challenges {
			if ch.Type == a.challType && ch.Error != nil {
				err = fmt.Errorf("authorizing %s: %w", a.domain, ch.Error)
			}
		}
		if checker, ok := a.solver.(answerChecker); ok && checker.AnswerLost(a.domain, a.token, a.keyAuth, a.presented) {
			return fmt.Errorf("%w: %w", ErrAnswerLost, err)
		}
		return err
	}
	return fmt.Errorf("the order is invalid: %w", order.Err())
}

func (c *Client) waitOrder(ctx context.Context, orderURL string) (acme.ExtendedOrder, error) {
	var final acme.ExtendedOrder
	err := c.validPace.Poll(ctx, 0, func() (bool, error) {
		order, err := withContext(ctx, func() (acme.ExtendedOrder, error) { return c.core.Orders.Get(orderURL) })
		stages.Mark(ctx, "poll_valid")
		if err != nil {
			return false, fmt.Errorf("polling the order: %w", err)
		}
		switch order.Status {
		case acme.StatusValid:
			final = order
			return true, nil
		case acme.StatusInvalid:
			return false, fmt.Errorf("the order is invalid: %w", order.Err())
		}
		return false, nil
	})
	return final, err
}

// MaxNamesPerOrder is the most names one certificate may carry: Let's
// Encrypt refuses an order for more ("Order cannot contain more than 100 DNS
// names"), and so do most public CAs.
const MaxNamesPerOrder = 100

// ErrTooManyNames is returned, before anything is sent to the CA, for an
// order of more than MaxNamesPerOrder names.
var ErrTooManyNames = fmt.Errorf("a certificate can carry at most %d names", MaxNamesPerOrder)

// maxCommonNameBytes is the upper bound of a subject's commonName (RFC 5280,
// ub-common-name). Let's Encrypt refuses a CSR whose CN is longer.
const maxCommonNameBytes = 64

// newCSR returns the DER certificate request for names, signed by key. The
// names go in the subjectAltName, which is what CAs and clients read; the
// first is also the commonName when it fits in 64 bytes, and otherwise there
// is no commonName at all, as lego does.
func newCSR(names []string, key crypto.Signer) ([]byte, error) {
	var subject pkix.Name
	if len(names[0]) <= maxCommonNameBytes {
		subject.CommonName = names[0]
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject, DNSNames: names}, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CSR: %w", err)
	}
	return csr, nil
}

func rsaKey(bits int) (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, bits) }

// replacesRejected tells whether a new-order error is the CA refusing the
// order as a whole rather than a limit or an outage: rate limits must stand
// (ARI renewals are exempt from them only with the hint), and transport errors
// are retried by the caller.
func replacesRejected(err error) bool {
	var problem *acme.ProblemDetails
	if !errors.As(err, &problem) {
		return false
	}
	switch problem.Type {
	case acme.RateLimitedErr, "urn:ietf:params:acme:error:badNonce":
		return false
	}
	return problem.HTTPStatus != 0 && problem.HTTPStatus != 429 && problem.HTTPStatus < 503
}
