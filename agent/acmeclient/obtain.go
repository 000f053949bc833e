package acmeclient

import (
	"context"
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
)

// Obtain orders one certificate for names (the first is the subject) with a
// new private key, answering each authorization by HTTP-01. It returns when the
// certificate is issued, the CA gives up, or ctx ends.
func (c *Client) Obtain(ctx context.Context, names []string) (*Certificate, error) {
	return c.ObtainWith(ctx, names, OrderOptions{})
}

// ObtainWith is Obtain with per-order options: the certificate it replaces
// (ARI) and a profile other than the configured one.
func (c *Client) ObtainWith(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("obtaining a certificate: no names")
	}
	cert, err := c.obtain(ctx, names, opts)
	if err != nil {
		// An outage is about the CA, not the name: it says so first.
		return nil, outageError(fmt.Errorf("obtaining certificate for %s: %w", names[0], err), c.cfg.DirectoryURL)
	}
	return cert, nil
}

func (c *Client) obtain(ctx context.Context, names []string, opts OrderOptions) (*Certificate, error) {
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
		return nil, fmt.Errorf("creating the order: %w", err)
	}
	for _, authzURL := range order.Authorizations {
		if err := c.authorize(ctx, authzURL); err != nil {
			return nil, err
		}
	}

	key, err := generateKey(c.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: names[0]},
		DNSNames: names,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CSR: %w", err)
	}
	finalized, err := withContext(ctx, func() (acme.ExtendedOrder, error) {
		return c.core.Orders.UpdateForCSR(order.Finalize, csr)
	})
	if err != nil {
		return nil, fmt.Errorf("finalizing the order: %w", err)
	}
	if finalized.Status != acme.StatusValid {
		finalized, err = c.waitOrder(ctx, order.Location)
		if err != nil {
			return nil, err
		}
	}
	chain, err := withContext(ctx, func() ([]byte, error) {
		chain, _, err := c.core.Certificates.Get(finalized.Certificate, true)
		return chain, err
	})
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
		CertURL:   finalized.Certificate,
		KeyType:   c.cfg.KeyType,
		Profile:   finalized.Profile,
		Replaces:  finalized.Replaces,
	}, nil
}

// authorize completes one authorization by HTTP-01 unless it is valid already.
func (c *Client) authorize(ctx context.Context, authzURL string) error {
	authz, err := withContext(ctx, func() (acme.Authorization, error) { return c.core.Authorizations.Get(authzURL) })
	if err != nil {
		return fmt.Errorf("reading authorization: %w", err)
	}
	if authz.Status == acme.StatusValid {
		return nil
	}
	domain := authz.Identifier.Value
	// Wildcards can only be validated through DNS; the rules pick DNS-01
	// for other names too (names nginx does not answer HTTP for).
	challType, solver := "http-01", c.solver
	if authz.Wildcard || c.cfg.DNSNames.Match(domain) {
		if c.cfg.DNSProvider == nil {
			return fmt.Errorf("authorizing %s: it needs DNS-01 and no DNS provider is configured", domain)
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
		return fmt.Errorf("authorizing %s: the CA offers no %s challenge", domain, challType)
	}
	keyAuth, err := c.core.GetKeyAuthorization(chall.Token)
	if err != nil {
		return fmt.Errorf("authorizing %s: %w", domain, err)
	}
	if err := solver.Present(domain, chall.Token, keyAuth); err != nil {
		return fmt.Errorf("authorizing %s: presenting the %s answer: %w", domain, challType, err)
	}
	// The answer is no longer needed once the authorization is final; a
	// failed clean-up only leaves a token that expires by itself or a TXT
	// record that nothing trusts any more.
	defer func() { _ = solver.CleanUp(domain, chall.Token, keyAuth) }()
	if challType == "dns-01" {
		if err := c.waitTXT(ctx, domain, keyAuth); err != nil {
			return fmt.Errorf("authorizing %s: %w", domain, err)
		}
	}

	started, err := withContext(ctx, func() (acme.ExtendedChallenge, error) { return c.core.Challenges.New(chall.URL) })
	if err != nil {
		return fmt.Errorf("authorizing %s: starting validation: %w", domain, err)
	}
	first := c.cfg.FirstPoll
	if d, err := api.ParseRetryAfter(started.RetryAfter); err == nil && d > 0 {
		first = min(d, 30*time.Second)
	}
	return poll(ctx, first, c.cfg.MaxPoll, func() (bool, error) {
		authz, err := withContext(ctx, func() (acme.Authorization, error) { return c.core.Authorizations.Get(authzURL) })
		if err != nil {
			return false, fmt.Errorf("authorizing %s: polling: %w", domain, err)
		}
		switch authz.Status {
		case acme.StatusValid:
			return true, nil
		case acme.StatusPending, acme.StatusProcessing:
			return false, nil
		}
		for _, ch := range authz.Challenges {
			if ch.Type == challType && ch.Error != nil {
				return false, fmt.Errorf("authorizing %s: %w", domain, ch.Error)
			}
		}
		return false, fmt.Errorf("authorizing %s: authorization is %s", domain, authz.Status)
	})
}

func (c *Client) waitOrder(ctx context.Context, orderURL string) (acme.ExtendedOrder, error) {
	var final acme.ExtendedOrder
	err := poll(ctx, c.cfg.FirstPoll, c.cfg.MaxPoll, func() (bool, error) {
		order, err := withContext(ctx, func() (acme.ExtendedOrder, error) { return c.core.Orders.Get(orderURL) })
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

// poll calls check after wait, doubling wait up to maxWait, until it reports
// done, fails, or ctx ends.
func poll(ctx context.Context, wait, maxWait time.Duration, check func() (bool, error)) error {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the CA: %w", context.Cause(ctx))
		case <-timer.C:
		}
		done, err := check()
		if err != nil || done {
			return err
		}
		wait = min(wait*2, maxWait)
		timer.Reset(wait)
	}
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
