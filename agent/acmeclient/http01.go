package acmeclient

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// TokenStore keeps HTTP-01 key authorizations where every nginx of the fleet
// can answer them.
type TokenStore interface {
	// PutToken makes token answerable for name with keyAuth (for 600 s).
	PutToken(ctx context.Context, name, token, keyAuth string) error
	// Token returns the key authorization stored for token under name, or
	// "" when none is (an error only when the store cannot be read).
	Token(ctx context.Context, name, token string) (string, error)
	// RestartedSince tells whether the store restarted after since, so
	// that nginx may have been unable to answer from it meanwhile.
	RestartedSince(ctx context.Context, since time.Time) (bool, error)
	// DeleteToken removes it.
	DeleteToken(ctx context.Context, name, token string) error
}

// ErrAnswerLost says that a challenge answer published before the CA
// validated may not have been there for the CA: when the validation failed
// it was gone from the store, the store could not be read, or it had
// restarted since (nginx cannot answer while Redis is down). The failure is
// the store's, not the name's.
var ErrAnswerLost = errors.New("the challenge answer was lost or unreadable in the token store")

// answerChecker is a solver that can tell whether an answer it presented at
// since may have been missing for the CA: the obtain flow asks it when a
// validation fails.
type answerChecker interface {
	AnswerLost(domain, token, keyAuth string, since time.Time) bool
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

// presentAttempts is how often Present writes a token that does not read back.
const presentAttempts = 3

// Present stores the key authorization before the CA is asked to validate,
// and reads it back: the CA is asked only once the answer is confirmed in
// the store, so a write acknowledged and then lost (a failover, a restart)
// is written again rather than failing the validation.
func (p *HTTP01Provider) Present(domain, token, keyAuth string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	for range presentAttempts {
		if err := p.tokens.PutToken(ctx, domain, token, keyAuth); err != nil {
			return err
		}
		stored, err := p.tokens.Token(ctx, domain, token)
		if err != nil {
			return fmt.Errorf("confirming the HTTP-01 token for %s: %w", domain, err)
		}
		if stored == keyAuth {
			return nil
		}
	}
	return fmt.Errorf("confirming the HTTP-01 token for %s: written %d times, never read back", domain, presentAttempts)
}

// AnswerLost tells whether the key authorization presented at since may
// have been missing when the CA looked: it is no longer stored, the store
// cannot be read, or the store restarted since.
func (p *HTTP01Provider) AnswerLost(domain, token, keyAuth string, since time.Time) bool {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	stored, err := p.tokens.Token(ctx, domain, token)
	if err != nil || stored != keyAuth {
		return true
	}
	restarted, err := p.tokens.RestartedSince(ctx, since)
	return err != nil || restarted
}

// CleanUp removes the key authorization once the authorization is final.
func (p *HTTP01Provider) CleanUp(domain, token, _ string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	return p.tokens.DeleteToken(ctx, domain, token)
}
