package store

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestSeenNonce(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const nonce = "00112233445566778899aabbccddeeff"
	if fresh, err := st.SeenNonce(ctx, "b", nonce); err != nil || !fresh {
		t.Fatalf("first use: %v, %v", fresh, err)
	}
	if fresh, err := st.SeenNonce(ctx, "b", nonce); err != nil || fresh {
		t.Errorf("second use: %v, %v; want not fresh", fresh, err)
	}
	// Nonces are kept per site.
	if fresh, _ := st.SeenNonce(ctx, "c", nonce); !fresh {
		t.Error("another site's nonce was taken for a replay")
	}
	doc, _ := schemadoc.Load()
	key, _ := doc["peernonce"].Key("t:", "site", "b", "nonce", nonce)
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["peernonce"].Type {
		t.Fatalf("%s is a %s, the document says %s", key, typ, doc["peernonce"].Type)
	}
	if ttl := r.Client.TTL(ctx, key).Val(); ttl <= PeerNonceTTL-10*time.Second || ttl > PeerNonceTTL || doc["peernonce"].TTL != "600 s" {
		t.Errorf("nonce TTL %s (document: %s), want %s", ttl, doc["peernonce"].TTL, PeerNonceTTL)
	}
}
