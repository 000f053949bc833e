package telemetry

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/certagent/certagent/agent/internal/backoff"
)

// Webhook headers. The signature is HMAC-SHA256, keyed with the shared
// secret, over the timestamp, a dot and the body, so a receiver can reject
// replays older than it tolerates.
const (
	SignatureHeader = "X-Certagent-Signature" // "sha256=<hex>"
	TimestampHeader = "X-Certagent-Timestamp" // Unix seconds
)

// WebhookConfig configures a webhook sink.
type WebhookConfig struct {
	URL    string
	Secret string // required: unsigned calls would let anyone forge events
	// Attempts per event before it is dropped. Default: 5.
	Attempts int
	// FirstRetry is the pause after the first failure, doubling after each
	// further one up to webhookRetryMost. Default: 1 s.
	FirstRetry time.Duration
	// Client sends the calls. Default: a client with a 10 s timeout.
	Client *http.Client
	// QueueSize bounds the events waiting for delivery. Default: 1000.
	QueueSize int
	// Grace is how long the queued events may take to be delivered once
	// the webhook is stopped. Default: 5 s.
	Grace  time.Duration
	Logger *slog.Logger
}

// Webhook posts events as JSON to a URL, signed, retried with backoff, from a
// bounded queue.
type Webhook struct {
	cfg WebhookConfig
	q   *queue
}

// NewWebhook starts the delivery goroutine, so events are posted at once;
// Run stops it.
func NewWebhook(cfg WebhookConfig, metrics *Metrics) (*Webhook, error) {
	if cfg.URL == "" || cfg.Secret == "" {
		return nil, fmt.Errorf("a webhook needs a URL and a secret")
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 5
	}
	if cfg.FirstRetry <= 0 {
		cfg.FirstRetry = time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Webhook{cfg: cfg}
	w.q = newQueue("webhook", cfg.QueueSize, w.deliver, metrics.dropped)
	return w, nil
}

// Emit queues e for delivery.
func (w *Webhook) Emit(ctx context.Context, e Event) {
	if Streamed(e.Type) {
		w.q.Emit(ctx, e)
	}
}

// Run returns when ctx has ended and what was queued is delivered, or
// after the grace.
func (w *Webhook) Run(ctx context.Context) error { return w.q.runUntil(ctx, w.cfg.Grace) }

// Sign returns the signature header value for body sent at timestamp.
func Sign(secret string, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(strconv.FormatInt(timestamp, 10)))
	mac.Write([]byte("."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// webhookRetryMost caps the pause between two attempts at one event.
const webhookRetryMost = time.Hour

func (w *Webhook) deliver(ctx context.Context, e Event) {
	body, err := json.Marshal(e)
	if err != nil {
		w.cfg.Logger.Error("encoding a webhook event", "error", err)
		return
	}
	for attempt := 1; ; attempt++ {
		err := w.post(ctx, body)
		if err == nil {
			return
		}
		if attempt == w.cfg.Attempts || ctx.Err() != nil {
			w.cfg.Logger.Warn("webhook delivery failed; event dropped", "event", e.Type, "name", e.Name,
				"attempts", attempt, "error", err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff.Doubling{First: w.cfg.FirstRetry, Most: webhookRetryMost}.After(attempt)):
		}
	}
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	ts := time.Now().Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(TimestampHeader, strconv.FormatInt(ts, 10))
	req.Header.Set(SignatureHeader, Sign(w.cfg.Secret, ts, body))
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		// url.Error quotes the URL, which may carry a token: keep it out of the log.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return err
	}
	// Drain a little so the connection is reused for the next event.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("the receiver answered %s", resp.Status)
	}
	return nil
}
