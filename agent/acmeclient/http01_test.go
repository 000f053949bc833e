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
	if err := p.CleanUp("a.example.test", "tok-1_x", "tok-1_x.thumbprint"); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.Exists(ctx, key).Val(); n != 0 {
		t.Error("token still stored after CleanUp")
	}

	// Redis down: Present fails with an error rather than hanging.
	r.Stop()
	if err := p.Present("a.example.test", "tok-2", "tok-2.thumbprint"); err == nil {
		t.Error("Present succeeded with Redis stopped")
	}
}
