package acmeclient

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
)

// ErrNoAccount says the CA knows no account for the key asked about.
var ErrNoAccount = errors.New("the CA knows no account for this key")

// AccountLockTTL bounds how long one agent's registration of a lost account
// may keep the others of the fleet waiting, should that agent die meanwhile.
const AccountLockTTL = time.Minute

const (
	problemAccountDoesNotExist = "urn:ietf:params:acme:error:accountDoesNotExist"
	problemUnauthorized        = "urn:ietf:params:acme:error:unauthorized"
)

// AccountChange describes an account registered again because the CA no
// longer knew the stored one (a CA reset, a deactivated account).
type AccountChange struct {
	Directory string
	OldURI    string
	NewURI    string
	// Registered is set for the agent that asked the CA; the other agents of
	// the fleet find the account it stored and only adopt it.
	Registered bool
	// Found: the CA still knew the key under another URL (onlyReturnExisting)
	// and nothing was created.
	Found bool
	// NewKey: the CA refused the old key, so a new one was generated.
	NewKey bool
	// Cause is the CA's answer that showed the account lost.
	Cause error
}

// AccountStatus is the account as the CA describes it.
type AccountStatus struct {
	URI     string   // the account URL the CA returned
	Status  string   // valid, deactivated or revoked
	Contact []string // e.g. mailto:ops@example.com
}

// AccountLost tells whether err is the CA saying that the account signing
// the request does not exist (accountDoesNotExist), or is no longer usable
// (unauthorized, naming the account): the stored account URL is of no use
// and the account has to be registered again. A failed validation is also
// unauthorized, but its detail names no account.
func AccountLost(err error) bool {
	var problem *acme.ProblemDetails
	if !errors.As(err, &problem) {
		return false
	}
	switch problem.Type {
	case problemAccountDoesNotExist:
		return true
	case problemUnauthorized:
		detail := strings.ToLower(problem.Detail)
		if !strings.Contains(detail, "account") {
			return false
		}
		for _, word := range []string{"deactivated", "revoked", "not found", "does not exist", "no account", "not valid"} {
			if strings.Contains(detail, word) {
				return true
			}
		}
	}
	return false
}

// registerAccount creates the account of core's key at the CA, agreeing to
// its terms, with cfg's e-mail and External Account Binding. A key the CA
// knows already gets its existing account back.
func registerAccount(ctx context.Context, core *api.Core, cfg Config) (acme.ExtendedAccount, error) {
	var contact []string
	if cfg.Email != "" {
		contact = []string{"mailto:" + cfg.Email}
	}
	req := acme.Account{TermsOfServiceAgreed: true, Contact: contact}
	account, err := withContext(ctx, func() (acme.ExtendedAccount, error) {
		if cfg.EABKeyID != "" {
			return core.Accounts.NewEAB(req, cfg.EABKeyID, cfg.EABHMAC)
		}
		return core.Accounts.New(req)
	})
	if err != nil {
		return account, outageError(fmt.Errorf("registering the ACME account at %s: %w", cfg.DirectoryURL, err), cfg.DirectoryURL)
	}
	return account, nil
}

// findAccount asks the CA for the account of core's key without creating
// one (onlyReturnExisting); an error wrapping ErrNoAccount when there is none.
func findAccount(ctx context.Context, core *api.Core, directory string) (acme.ExtendedAccount, error) {
	account, err := withContext(ctx, func() (acme.ExtendedAccount, error) {
		return core.Accounts.New(acme.Account{OnlyReturnExisting: true})
	})
	var problem *acme.ProblemDetails
	if errors.As(err, &problem) && problem.Type == problemAccountDoesNotExist {
		return account, fmt.Errorf("looking up the ACME account at %s: %w", directory, ErrNoAccount)
	}
	if err != nil {
		return account, fmt.Errorf("looking up the ACME account at %s: %w", directory, err)
	}
	return account, nil
}

// LookupAccount asks the CA of cfg which account it holds for the key in
// keyPEM, creating nothing. It returns an error wrapping ErrNoAccount when the
// CA knows none.
func LookupAccount(ctx context.Context, cfg Config, keyPEM string) (*AccountStatus, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	key, err := parseKey([]byte(keyPEM))
	if err != nil {
		return nil, fmt.Errorf("the stored ACME account key is unusable: %w", err)
	}
	core, err := newCore(ctx, cfg, "", key)
	if err != nil {
		return nil, err
	}
	account, err := findAccount(ctx, core, cfg.DirectoryURL)
	if err != nil {
		return nil, err
	}
	return &AccountStatus{URI: account.Location, Status: account.Status, Contact: account.Contact}, nil
}

// registration is the outcome of registering a lost account again.
type registration struct {
	keyPEM, uri   string
	found, newKey bool
}

// registerAgain finds the account of c's key at the CA (onlyReturnExisting),
// else creates it with the same key, else, when the CA refuses that key (a
// deactivated account's), with a new one. It uses a core of its own: c's keeps
// serving the orders in flight.
func (c *Client) registerAgain(ctx context.Context) (*registration, error) {
	key, err := parseKey([]byte(c.keyPEM))
	if err != nil {
		return nil, fmt.Errorf("the stored ACME account key is unusable: %w", err)
	}
	core, err := newCore(ctx, c.cfg, "", key)
	if err != nil {
		return nil, err
	}
	account, err := findAccount(ctx, core, c.cfg.DirectoryURL)
	if err == nil && account.Status == acme.StatusValid {
		return &registration{keyPEM: c.keyPEM, uri: account.Location, found: true}, nil
	}
	if err != nil && !errors.Is(err, ErrNoAccount) && !refusedKey(err) {
		return nil, err // the CA is unreachable or failing: try again later
	}
	if err == nil || refusedKey(err) {
		// The key's account exists but is deactivated or revoked: the CA
		// will not take that key again.
		return c.registerNewKey(ctx)
	}
	account, err = registerAccount(ctx, core, c.cfg)
	if refusedKey(err) {
		return c.registerNewKey(ctx)
	}
	if err != nil {
		return nil, err
	}
	return &registration{keyPEM: c.keyPEM, uri: account.Location}, nil
}

// registerNewKey registers a new account under a newly generated key.
func (c *Client) registerNewKey(ctx context.Context) (*registration, error) {
	key, err := generateKey("ec256")
	if err != nil {
		return nil, fmt.Errorf("generating an ACME account key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the ACME account key: %w", err)
	}
	core, err := newCore(ctx, c.cfg, "", key)
	if err != nil {
		return nil, err
	}
	account, err := registerAccount(ctx, core, c.cfg)
	if err != nil {
		return nil, err
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	return &registration{keyPEM: keyPEM, uri: account.Location, newKey: true}, nil
}

// refusedKey tells whether err is the CA refusing the account key itself
// (unauthorized, badPublicKey, ...) rather than failing or limiting: a 4xx
// problem other than a rate limit, a bad nonce or a missing account.
func refusedKey(err error) bool {
	var problem *acme.ProblemDetails
	if !errors.As(err, &problem) {
		return false
	}
	switch problem.Type {
	case acme.RateLimitedErr, "urn:ietf:params:acme:error:badNonce", problemAccountDoesNotExist:
		return false
	}
	return problem.HTTPStatus >= 400 && problem.HTTPStatus < 500 && problem.HTTPStatus != 429
}

// Account asks the CA for the account this client uses (POST-as-GET of its
// URL).
func (c *Client) Account(ctx context.Context) (*AccountStatus, error) {
	account, err := withContext(ctx, func() (acme.Account, error) { return c.core.Accounts.Get(c.accountURI) })
	if err != nil {
		return nil, fmt.Errorf("reading the ACME account %s: %w", c.accountURI, err)
	}
	return &AccountStatus{URI: c.accountURI, Status: account.Status, Contact: account.Contact}, nil
}
