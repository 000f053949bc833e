package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server started for one test. It keeps its port across
// Stop and Start so tests can take Redis away and bring it back.
type Redis struct {
	Addr   string // host:port on 127.0.0.1
	URL    string // redis://127.0.0.1:port/0
	Client *redis.Client

	t    testing.TB
	bin  string
	node *redisNode
}

// StartRedis starts a redis-server with no persistence on a free port.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	return StartRedisArgs(t)
}

// StartRedisArgs is StartRedis with further redis-server arguments, kept
// across Stop and Start (e.g. "--appendonly", "yes" to survive a restart).
func StartRedisArgs(t testing.TB, extra ...string) *Redis {
	t.Helper()
	port := FreePort(t)
	r := &Redis{t: t, bin: Require(t, "redis-server"),
		node: &redisNode{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: t.TempDir(), args: extra}}
	r.Addr = r.node.Addr
	r.URL = "redis://" + r.Addr + "/0"
	r.Start()
	r.Client = redis.NewClient(&redis.Options{Addr: r.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() {
		r.Client.Close()
		r.Stop()
	})
	return r
}

// Start starts the server again after Stop (or the first time).
func (r *Redis) Start() {
	r.t.Helper()
	if r.node.cmd == nil {
		r.node.start(r.t, r.bin)
	}
}

// Stop kills the server; connections to Addr are refused until Start.
func (r *Redis) Stop() { r.node.stop() }

// CommandCalls returns how many times Redis has run cmd (lowercase, e.g. "xadd")
// since start or the last CONFIG RESETSTAT, from INFO commandstats.
func (r *Redis) CommandCalls(cmd string) (int64, error) {
	return r.commandStat(cmd, "calls")
}

// RejectedCalls returns how many times Redis has refused cmd before running
// it (an ACL's NOPERM among others), from INFO commandstats.
func (r *Redis) RejectedCalls(cmd string) (int64, error) {
	return r.commandStat(cmd, "rejected_calls")
}

// commandStat returns one field of cmd's INFO commandstats line (0 when
// Redis has not seen cmd, or the field is absent).
func (r *Redis) commandStat(cmd, field string) (int64, error) {
	info, err := r.Client.InfoMap(context.Background(), "commandstats").Result()
	if err != nil {
		return 0, err
	}
	stats, ok := info["Commandstats"]["cmdstat_"+cmd]
	if !ok {
		return 0, nil
	}
	for _, kv := range strings.Split(stats, ",") {
		k, v, _ := strings.Cut(kv, "=")
		if k != field {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing commandstats %q: %w", stats, err)
		}
		return n, nil
	}
	return 0, nil
}
