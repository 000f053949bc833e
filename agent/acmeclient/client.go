// Package acmeclient obtains certificates from an ACME CA with lego's protocol
// layer (acme/api). It drives the order itself rather than through lego's
// Certificate.Obtain, whose first authorization poll waits 5 s when the CA
// sends no Retry-After; here polls start short and grow, so an order against a
// fast CA takes tens of milliseconds and a real CA is not hammered.
package acmeclient

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/challenge"

	"github.com/certagent/certagent/agent/internal/backoff"
)

// LetsEncryptProduction is the default directory URL.
const LetsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"

// LetsEncryptStaging is Let's Encrypt's test CA.
const LetsEncryptStaging = "https://acme-staging-v02.api.letsencrypt.org/directory"

// Config configures a Client.
type Config struct {
	// DirectoryURL of the CA. Default: LetsEncryptProduction.
	DirectoryURL string
	// Email registered with the account; may be empty.
	Email string
	// KeyType of certificate keys: ec256 (default), ec384, rsa2048 or rsa4096.
	KeyType string
	// ObserveRequest, when set, is told the duration of every HTTP request
	// to the CA (for latency metrics). Default: none.
	ObserveRequest func(method string, took time.Duration, err error)
	// HTTPClient talks to the CA. Default: one trusting the system roots and
	// CARootFiles, with connect and TLS timeouts of 5 s, 15 s for the
	// response's headers and 30 s for a whole request.
	HTTPClient *http.Client
	// CARootFiles are PEM files of extra roots trusted for the CA's HTTPS
	// endpoint (private CAs, Pebble). Ignored when HTTPClient is set.
	CARootFiles []string
	// UserAgent sent to the CA. Default: "certagent".
	UserAgent string
	// FirstPoll is the first wait before polling an order (for its
	// validations, or for its certificate once finalized) until the client
	// has seen how long this CA takes; from then on the polls are placed
	// around that time (backoff.Pace), never closer together than a fifth of
	// FirstPoll. A Retry-After from the CA is waited out first. Default:
	// 25 ms. Polls that find the order still waiting double the wait up to
	// MaxPoll (default 1 s).
	FirstPoll, MaxPoll time.Duration
	// Profile asked for on every order (e.g. Let's Encrypt's "shortlived").
	// Default: none, the CA's default profile.
	Profile string
	// EABKeyID and EABHMAC bind a new account to an account the CA knows
	// already (External Account Binding, RFC 8555 section 7.3.4), for CAs that
	// require it. EABHMAC is base64url, as CAs hand it out. Default: none.
	EABKeyID, EABHMAC string
	// DNSProvider answers DNS-01 challenges (a lego DNS provider, see
	// NewDNSProvider) for wildcard names and names matching DNSNames.
	// Default: none; such names then fail with a clear error.
	DNSProvider challenge.Provider
	// DNSNames selects the names validated by DNS-01. Default: none (only
	// wildcards).
	DNSNames DNSRules
	// DNSResolver ("host:port") is asked whether a published TXT record is
	// visible before the CA validates it. Default: the system resolver.
	DNSResolver string
	// AccountChanged, when set, is told when a Lazy client has replaced an
	// account the CA lost (see AccountChange). Default: none.
	AccountChanged func(AccountChange)
}

// AccountStore keeps the ACME account shared by every agent of the fleet.
type AccountStore interface {
	// ClaimAccountKey stores keyPEM unless a key is already stored for
	// (directory, email) and returns what is stored.
	ClaimAccountKey(ctx context.Context, directory, email, keyPEM string) (keyPEMStored, uri string, err error)
	// SetAccountURI records the account URL after registration.
	SetAccountURI(ctx context.Context, directory, email, uri string) error
	// LoadAccount returns the stored key and URL (empty when none) and the
	// account's generation, in one read.
	LoadAccount(ctx context.Context, directory, email string) (keyPEM, uri string, generation int64, err error)
	// ReplaceAccount stores the key and URL of the account registered again
	// after the CA lost the stored one, and counts one more generation, in
	// one write.
	ReplaceAccount(ctx context.Context, directory, email, keyPEM, uri string) error
	// LockAccount takes the fleet-wide lock on registering the account
	// again, waiting while another agent holds it, until ctx ends. It
	// expires after ttl if its holder dies.
	LockAccount(ctx context.Context, directory, email string, ttl time.Duration) (unlock func(), err error)
}

// Client orders certificates from one CA with one account.
type Client struct {
	cfg    Config
	core   *api.Core
	solver challenge.Provider

	accountURI string
	// keyPEM is the account key as stored. Never logged.
	keyPEM string
	// generation is the stored account's generation when this client was
	// made: a greater one means another agent registered the account again.
	generation int64

	// readyPace and validPace place the polls of an order waiting for its
	// validations and for its certificate (backoff.Pace).
	readyPace, validPace *backoff.Pace
}

// Certificate is an issued certificate with its new private key.
type Certificate struct {
	FullChain []byte // PEM, leaf first
	KeyPEM    []byte // PEM, PKCS #8
	CertURL   string
	KeyType   string
	// Profile is the profile the CA says it issued under (empty if it has none).
	Profile string
	// Replaces is the ARI id of the certificate the CA recorded this order as
	// replacing (empty for a first issuance or when the CA ignored it).
	Replaces string
}

// New loads or registers the account for cfg and returns a client that
// answers HTTP-01 challenges with solver.
func New(ctx context.Context, cfg Config, accounts AccountStore, solver challenge.Provider) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	accountKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating an ACME account key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(accountKey)
	if err != nil {
		return nil, fmt.Errorf("encoding the ACME account key: %w", err)
	}
	if _, _, err := accounts.ClaimAccountKey(ctx, cfg.DirectoryURL, cfg.Email,
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))); err != nil {
		return nil, err
	}
	// Key, URL and generation in one read: an account registered again
	// meanwhile is read whole.
	storedPEM, uri, generation, err := accounts.LoadAccount(ctx, cfg.DirectoryURL, cfg.Email)
	if err != nil {
		return nil, err
	}
	key, err := parseKey([]byte(storedPEM))
	if err != nil {
		return nil, fmt.Errorf("the stored ACME account key is unusable: %w", err)
	}

	core, err := newCore(ctx, cfg, uri, key)
	if err != nil {
		return nil, err
	}
	if uri == "" {
		// Registering an existing key returns the existing account, so two
		// agents racing here end up with the same account URL.
		account, err := registerAccount(ctx, core, cfg)
		if err != nil {
			return nil, err
		}
		if err := accounts.SetAccountURI(ctx, cfg.DirectoryURL, cfg.Email, account.Location); err != nil {
			return nil, err
		}
		uri = account.Location
	}
	return &Client{cfg: cfg, core: core, solver: solver, accountURI: uri, keyPEM: storedPEM, generation: generation,
		readyPace: cfg.OrderPace(), validPace: cfg.OrderPace()}, nil
}

// The defaults of Config.FirstPoll and Config.MaxPoll.
const (
	defaultFirstPoll = 25 * time.Millisecond
	defaultMaxPoll   = time.Second
)

// OrderPace returns the pace of one kind of an order's waits as cfg sets it
// (the defaults where FirstPoll or MaxPoll is zero): each client keeps one
// for its orders' validations and one for their certificates.
func (cfg Config) OrderPace() *backoff.Pace {
	first, most := cmp.Or(cfg.FirstPoll, defaultFirstPoll), cmp.Or(cfg.MaxPoll, defaultMaxPoll)
	return backoff.NewPace(first, first/5, most)
}

// withDefaults fills in cfg's defaults and wraps its HTTP client with the
// request observer.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.DirectoryURL == "" {
		cfg.DirectoryURL = LetsEncryptProduction
	}
	if cfg.KeyType == "" {
		cfg.KeyType = "ec256"
	}
	if _, err := generateKey(cfg.KeyType); err != nil {
		return cfg, err
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "certagent"
	}
	if cfg.FirstPoll <= 0 {
		cfg.FirstPoll = defaultFirstPoll
	}
	if cfg.MaxPoll <= 0 {
		cfg.MaxPoll = defaultMaxPoll
	}
	if (cfg.EABKeyID == "") != (cfg.EABHMAC == "") {
		return cfg, errors.New("external account binding needs both the key id and the HMAC key")
	}
	if cfg.HTTPClient == nil {
		client, err := httpClient(cfg.CARootFiles)
		if err != nil {
			return cfg, err
		}
		cfg.HTTPClient = client
	}
	if cfg.ObserveRequest != nil {
		cfg.HTTPClient = observeRequests(cfg.HTTPClient, cfg.ObserveRequest)
	}
	return cfg, nil
}

// newCore reads the CA's directory and returns lego's protocol layer signing
// with key as the account uri (empty before registration).
func newCore(ctx context.Context, cfg Config, uri string, key crypto.Signer) (*api.Core, error) {
	// lego wraps the transport of the client it is given: a copy keeps the
	// caller's client (a Lazy's retries, the other cores of one account)
	// from being wrapped again, or changed under requests in flight.
	own := *cfg.HTTPClient
	core, err := withContext(ctx, func() (*api.Core, error) {
		return api.New(&own, cfg.UserAgent, cfg.DirectoryURL, uri, key)
	})
	if err != nil {
		return nil, outageError(fmt.Errorf("reading the ACME directory %s: %w", cfg.DirectoryURL, err), cfg.DirectoryURL)
	}
	return core, nil
}

// AccountURI returns the URL of the ACME account this client uses.
func (c *Client) AccountURI() string { return c.accountURI }

// DirectoryURL returns the CA this client orders from.
func (c *Client) DirectoryURL() string { return c.cfg.DirectoryURL }

func httpClient(rootFiles []string) (*http.Client, error) {
	pool, err := LoadCARoots(rootFiles)
	if err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	transport.DialContext = (&net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}).DialContext
	transport.TLSHandshakeTimeout = TLSHandshakeTimeout
	transport.ResponseHeaderTimeout = ResponseHeaderTimeout
	// Orders run many at once against one CA (manager.Concurrency, up to 32
	// by default): Go keeps 2 idle connections per host otherwise, and every
	// other request would open a new TLS connection.
	transport.MaxIdleConnsPerHost = MaxIdleConnsPerCA
	return &http.Client{Transport: transport, Timeout: RequestTimeout}, nil
}

// Timeouts of the HTTP client to the CA: short enough that a CA which
// accepts connections and never answers is noticed within seconds, at the
// first request, rather than at the end of the order's timeout.
const (
	DialTimeout           = 5 * time.Second
	TLSHandshakeTimeout   = 5 * time.Second
	ResponseHeaderTimeout = 15 * time.Second
	RequestTimeout        = 30 * time.Second
	// MaxIdleConnsPerCA is how many idle connections to a CA are kept for
	// the next requests (HTTP/1.1; over HTTP/2 one connection carries them
	// all).
	MaxIdleConnsPerCA = 64
)

// LoadCARoots returns the system roots plus the certificates of the given PEM
// files, or why a file is unusable.
func LoadCARoots(rootFiles []string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, file := range rootFiles {
		if strings.TrimSpace(file) == "" {
			// An empty CERTAGENT_CA_ROOTS (docker/compose.yml passes one
			// without the pebble profile) names no file: system roots only.
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading CA roots: %w", err)
		}
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("reading CA roots: no PEM certificate in %s", file)
		}
	}
	return pool, nil
}

func generateKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case "ec256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ec384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "rsa2048":
		return rsaKey(2048)
	case "rsa4096":
		return rsaKey(4096)
	}
	return nil, fmt.Errorf("unknown key type %q (want ec256, ec384, rsa2048 or rsa4096)", keyType)
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key %T", key)
	}
	return signer, nil
}
