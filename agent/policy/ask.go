package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/internal/backoff"
	"github.com/certagent/certagent/agent/internal/clock"
)

// ErrAskUnavailable is returned when the ask URL cannot answer: the name is
// neither allowed nor denied, and is tried again later.
var ErrAskUnavailable = errors.New("the ask URL is unavailable")

// AskConfig configures an Ask.
type AskConfig struct {
	// URL is asked GET URL?domain=<name>; a 2xx answer allows the name, any
	// other 1xx–4xx answer denies it. A 5xx answer, a timeout or a refused
	// connection means unavailable. Required.
	URL string
	// Timeout bounds one question. Default: 5 s.
	Timeout time.Duration
	// Client makes the requests. Default: an http.Client that does not
	// follow redirects, so a 3xx is the answer (a refusal), not whatever
	// page it leads to.
	Client *http.Client
	// Clock. Default: the system clock.
	Clock clock.Clock
}

// Ask consults the operator's ask URL. After the URL failed to answer it is
// not asked again for a pause that doubles from 1 s to 1 min, so a flood of
// names cannot turn an outage into a hot loop of timeouts.
type Ask struct {
	cfg  AskConfig
	base *url.URL

	mu        sync.Mutex
	downUntil time.Time
	pause     time.Duration
}

// NewAsk checks cfg and returns an Ask.
func NewAsk(cfg AskConfig) (*Ask, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("ask URL %q: want an http:// or https:// URL", cfg.URL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	return &Ask{cfg: cfg, base: u}, nil
}

// Allows asks whether name may get a certificate. The error wraps
// ErrAskUnavailable when the URL did not give an answer.
func (a *Ask) Allows(ctx context.Context, name string) (bool, error) {
	a.mu.Lock()
	if until := a.downUntil; a.cfg.Clock.Now().Before(until) {
		a.mu.Unlock()
		return false, fmt.Errorf("asking about %s: %w (not asked again before %s)", name, ErrAskUnavailable, until.Format(time.RFC3339))
	}
	a.mu.Unlock()

	allowed, err := a.ask(ctx, name)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		a.pause = backoff.Doubling{First: time.Second, Most: time.Minute}.Next(a.pause)
		a.downUntil = a.cfg.Clock.Now().Add(a.pause)
		return false, fmt.Errorf("asking about %s: %w: %w", name, ErrAskUnavailable, err)
	}
	if err != nil {
		return false, fmt.Errorf("asking about %s: %w", name, err)
	}
	a.pause, a.downUntil = 0, time.Time{}
	return allowed, nil
}

func (a *Ask) ask(ctx context.Context, name string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	u := *a.base
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, err
	}
	resp, err := a.cfg.Client.Do(req)
	if err != nil {
		// url.Error quotes the URL, whose query may hold the operator's
		// token; the error goes to logs and the failure record in Redis.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return false, err
	}
	defer resp.Body.Close()
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode >= 500 {
		return false, fmt.Errorf("answered %s", resp.Status)
	}
	return resp.StatusCode >= 200 && resp.StatusCode < 300, nil
}
