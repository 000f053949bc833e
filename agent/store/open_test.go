package store

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// Open talks to the Redis of its URL, with the key prefix and until Close.
func TestOpenPingsAndClosesTheConfiguredRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	st, err := Open(ctx, Config{URL: "redis://" + r.Addr + "/0", KeyPrefix: "p:"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if _, err := st.AddAllowRules(ctx, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.Exists(ctx, "p:allow").Val(); n != 1 {
		t.Errorf("key p:allow exists %d times: the prefix was not used", n)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); !errors.Is(err, redis.ErrClosed) {
		t.Errorf("Ping after Close: %v, want %v", err, redis.ErrClosed)
	}
}

// Every unusable configuration is refused before any I/O, naming the
// setting behind it.
func TestOpenRefusesUnusableConfigs(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want Setting
	}{
		{Config{URL: "http://x"}, SettingURL},
		{Config{URL: "redis://x:6379", CAFile: "/nonexistent.pem"}, SettingCAFile},
		{Config{URL: "rediss://x:6379", CAFile: "/nonexistent.pem"}, SettingCAFile},
		{Config{URL: "redis://x", SentinelMaster: "m"}, SettingSentinel},
		{Config{URL: "redis://x", Sentinels: []string{"s:26379"}}, SettingSentinel},
		{Config{URL: "redis://x", SentinelMaster: "m", Sentinels: []string{"s:1"}, Cluster: []string{"c:1"}}, SettingSentinel},
		{Config{URL: "redis://x/1", Cluster: []string{"c:1"}, KeyPrefix: "{t}:"}, SettingURL},
		{Config{URL: "redis://x", Cluster: []string{"c:1"}, KeyPrefix: "certagent:"}, SettingKeyPrefix},
		{Config{URL: "redis://x", Cluster: []string{"c:1"}, KeyPrefix: "{}:"}, SettingKeyPrefix},
		{Config{URL: "redis://x", WaitReplicas: -1}, SettingWaitReplicas},
	} {
		st, err := Open(context.Background(), tc.cfg)
		var cfgErr *ConfigError
		if !errors.As(err, &cfgErr) || cfgErr.Setting != tc.want {
			t.Errorf("Open(%+v) = %v, %v; want a ConfigError about %s", tc.cfg, st, err, tc.want)
		}
	}
	for _, cfg := range []Config{
		{URL: "redis://x", SentinelMaster: "m", Sentinels: []string{" s:1 ", ""}},
		{URL: "rediss://x", Cluster: []string{"c:1"}, KeyPrefix: "{certagent}:"},
	} {
		st, err := Open(context.Background(), cfg)
		if err != nil {
			t.Errorf("Open(%+v): %v", cfg, err)
			continue
		}
		_ = st.Close()
	}
}

// go-redis's own log lines reach the slog handler, in its format: a
// client whose server is gone logs its failed dials.
func TestSetLoggerRoutesGoRedisLines(t *testing.T) {
	// A file, not a buffer: go-redis logs from its pool's goroutines.
	logs, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	SetLogger(slog.New(slog.NewJSONHandler(logs, nil)))
	t.Cleanup(func() { SetLogger(slog.New(slog.DiscardHandler)) })
	r := testenv.StartRedis(t)
	st, err := Open(context.Background(), Config{URL: "redis://" + r.Addr + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = st.Ping(ctx)
	data, _ := os.ReadFile(logs.Name())
	out := string(data)
	var line struct{ Level, Msg string }
	first, _, _ := strings.Cut(out, "\n")
	if err := json.Unmarshal([]byte(first), &line); err != nil || line.Level != "WARN" || line.Msg == "" {
		t.Errorf("logged %q (%v); want JSON warnings", out, err)
	}
}
