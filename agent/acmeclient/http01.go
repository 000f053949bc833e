package acmeclient

import (
	"context"
	"time"
)

// TokenStore keeps HTTP-01 key authorizations where every nginx of the fleet
// can answer them.
type TokenStore interface {
	// PutToken makes token answerable for name with keyAuth (for 600 s).
	PutToken(ctx context.Context, name, token, keyAuth string) error
	// DeleteToken removes it.
	DeleteToken(ctx context.Context, name, token string) error
}

// HTTP01Provider is a lego challenge.Provider that publishes HTTP-01 tokens
// through a TokenStore (Redis), which nginx serves on
// /.well-known/acme-challenge/ for every node.
type HTTP01Provider struct {
	tokens  TokenStore
	timeout time.Duration
}

// NewHTTP01Provider returns a provider whose writes give up after timeout
// (default 5 s).
func NewHTTP01Provider(tokens TokenStore, timeout time.Duration) *HTTP01Provider {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &HTTP01Provider{tokens: tokens, timeout: timeout}
}

// Present stores the key authorization before the CA is asked to validate.
func (p *HTTP01Provider) Present(domain, token, keyAuth string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	return p.tokens.PutToken(ctx, domain, token, keyAuth)
}

// CleanUp removes the key authorization once the authorization is final.
func (p *HTTP01Provider) CleanUp(domain, token, _ string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	return p.tokens.DeleteToken(ctx, domain, token)
}
