package store

import (
	"context"
	"testing"
	"time"
)

func TestPutTokenForKeepsTheGivenTTL(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	if err := st.PutTokenFor(ctx, "a.example.com", "tok", "tok.thumb", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	key := st.Keys().Token("a.example.com", "tok")
	if v := r.Client.Get(ctx, key).Val(); v != "tok.thumb" {
		t.Errorf("token holds %q", v)
	}
	if ttl := r.Client.TTL(ctx, key).Val(); ttl <= 20*time.Second || ttl > 30*time.Second {
		t.Errorf("token TTL %s, want 30 s", ttl)
	}
}
