package testenv

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Corruption damages a stored certificate record (a hash at a key) the way
// a bad restore, a hand edit or a half-written copy could.
type Corruption struct {
	Name string
	// Reason is a piece of the reason the agent gives for such a record.
	Reason string
	Apply  func(ctx context.Context, rdb redis.Cmdable, key string) error
	// NginxServes is set when nginx cannot tell (it does not check the
	// names a certificate covers): it serves the record, the client refuses
	// it, and only the agent's check finds it.
	NginxServes bool
}

// Corruptions returns one of each kind of corrupt record the agent must
// recognize; the other name's certificate and key are made for the test.
func Corruptions(t testing.TB) []Corruption {
	other := NewCert(t, CertSpec{CommonName: "other.invalid", DNSNames: []string{"other.invalid"}})
	return []Corruption{
		{"truncated PEM", "fullchain", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			// Cut in the middle of the leaf.
			chain, err := rdb.HGet(ctx, key, "fullchain").Result()
			if err != nil {
				return err
			}
			return rdb.HSet(ctx, key, "fullchain", chain[:strings.Index(chain, "-----END")/2]).Err()
		}, false},
		{"truncated chain", "after the last certificate", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			// The last certificate cut off: nginx serves the ones before it.
			chain, err := rdb.HGet(ctx, key, "fullchain").Result()
			if err != nil {
				return err
			}
			return rdb.HSet(ctx, key, "fullchain", chain+chain[:strings.Index(chain, "-----END")/2]).Err()
		}, true},
		{"random bytes", "fullchain", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			return rdb.HSet(ctx, key, "fullchain", rand.Text()+rand.Text()).Err()
		}, false},
		{"another name's key", "the key does not belong", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			return rdb.HSet(ctx, key, "key", string(other.KeyPEM)).Err()
		}, false},
		{"missing key field", "field key missing", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			return rdb.HDel(ctx, key, "key").Err()
		}, false},
		{"another name's certificate", "not for", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			return rdb.HSet(ctx, key, "fullchain", string(other.CertPEM), "key", string(other.KeyPEM),
				"not_after", other.X509.NotAfter.Unix()).Err()
		}, true},
		{"wrong type", "holds a string", func(ctx context.Context, rdb redis.Cmdable, key string) error {
			if err := rdb.Del(ctx, key).Err(); err != nil {
				return err
			}
			return rdb.Set(ctx, key, "a string", 0).Err()
		}, false},
	}
}
