package acmeclient

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// TestHTTP01ProviderWritesTokensToRedis: Present makes the key authorization
// readable where nginx looks (the document's key) for 600 s; CleanUp removes it.
func TestHTTP01ProviderWritesTokensToRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	p := NewHTTP01Provider(store.New(r.Client, store.Keys{}), 0)
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	key, err := doc["token"].Key("certagent:", "name", "a.example.test", "token", "tok-1_x")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Present("a.example.test", "tok-1_x", "tok-1_x.thumbprint"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if v := r.Client.Get(ctx, key).Val(); v != "tok-1_x.thumbprint" {
		t.Errorf("%s = %q after Present", key, v)
	}
	if ttl := r.Client.TTL(ctx, key).Val(); ttl <= 590*time.Second || ttl > 600*time.Second {
		t.Errorf("token TTL %s, want 600 s", ttl)
	}
	presented := time.Now()
	if p.AnswerLost("a.example.test", "tok-1_x", "tok-1_x.thumbprint", presented) {
		t.Error("AnswerLost with the token stored and Redis up all along")
	}
	// Redis loses it (a restart that missed the last write).
	r.Client.Del(ctx, key)
	if !p.AnswerLost("a.example.test", "tok-1_x", "tok-1_x.thumbprint", presented) {
		t.Error("not AnswerLost after the token was lost")
	}
	if err := p.Present("a.example.test", "tok-1_x", "tok-1_x.thumbprint"); err != nil {
		t.Fatal(err)
	}
	if err := p.CleanUp("a.example.test", "tok-1_x", "tok-1_x.thumbprint"); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.Exists(ctx, key).Val(); n != 0 {
		t.Error("token still stored after CleanUp")
	}

	// Redis down: Present fails with an error rather than hanging, and an
	// answer that cannot be read is not confirmed.
	r.Stop()
	if err := p.Present("a.example.test", "tok-2", "tok-2.thumbprint"); err == nil {
		t.Error("Present succeeded with Redis stopped")
	}
	if !p.AnswerLost("a.example.test", "tok-2", "tok-2.thumbprint", time.Now()) {
		t.Error("not AnswerLost with Redis stopped")
	}
}

// A token that survived a Redis restart (an append-only file) was still
// unreadable for nginx while Redis was down: a validation that failed
// across the restart is the store's doing.
func TestHTTP01ProviderCountsARedisRestartAsALostAnswer(t *testing.T) {
	r := testenv.StartRedisArgs(t, "--appendonly", "yes", "--appendfsync", "always")
	p := NewHTTP01Provider(store.New(r.Client, store.Keys{}), 0)
	presented := time.Now()
	if err := p.Present("a.example.test", "tok", "tok.thumb"); err != nil {
		t.Fatal(err)
	}
	if p.AnswerLost("a.example.test", "tok", "tok.thumb", presented) {
		t.Fatal("AnswerLost before any restart")
	}
	// Seen for certain two seconds on (store.RestartedSince).
	time.Sleep(2500 * time.Millisecond)
	r.Stop()
	r.Start()
	if !p.AnswerLost("a.example.test", "tok", "tok.thumb", presented) {
		t.Error("a restart after the token was written is not counted")
	}
}

// droppingTokens acknowledges writes but keeps only those after the first
// drop of them, as a store that fails over right after acknowledging.
type droppingTokens struct {
	memTokens
	drop int
}

func (d *droppingTokens) PutToken(ctx context.Context, name, token, keyAuth string) error {
	if d.drop > 0 {
		d.drop--
		d.puts++
		return nil
	}
	return d.memTokens.PutToken(ctx, name, token, keyAuth)
}

// Present confirms the token by reading it back and writes it again when the
// store lost it; it gives up with an error when it never reads back.
func TestHTTP01ProviderWritesAgainUntilTheTokenReadsBack(t *testing.T) {
	tokens := &droppingTokens{memTokens: memTokens{tokens: map[string]string{}}, drop: 1}
	p := NewHTTP01Provider(tokens, 0)
	if err := p.Present("a.example.test", "tok", "tok.thumb"); err != nil {
		t.Fatal(err)
	}
	if tokens.puts != 2 || tokens.tokens["a.example.test/tok"] != "tok.thumb" {
		t.Errorf("%d writes, stored %q: want a second write that stuck", tokens.puts, tokens.tokens["a.example.test/tok"])
	}
	tokens.drop = presentAttempts
	if err := p.Present("b.example.test", "tok", "tok.thumb"); err == nil {
		t.Error("Present succeeded though the token never read back")
	}
}
