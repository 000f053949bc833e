package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the master name the Sentinel setup monitors.
const SentinelMaster = "certagent"

// Sentinel is a replicated Redis watched by Sentinel, started for one test
// from Debian's redis-server (master and replica) and redis-sentinel: one
// master, one replica and three sentinels with a quorum of two.
type Sentinel struct {
	MasterName string   // the name the sentinels know the master by
	Addrs      []string // host:port of each sentinel
	// Client follows the master through the sentinels.
	Client *redis.Client

	t     testing.TB
	bin   string
	nodes []*redisNode // data nodes; nodes[0] starts as the master
}

// StartSentinel starts the master, a replica of it and three sentinels, and
// waits until the sentinels know the replica, so a failover can promote it.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	bin := Require(t, "redis-server")
	sentinelBin := Require(t, "redis-sentinel")
	base := t.TempDir()
	s := &Sentinel{MasterName: SentinelMaster, t: t, bin: bin}
	// No 5 s wait before the first full sync (the default for diskless
	// sync), on either node: each may be the master after a failover.
	master := startRedisNode(t, bin, filepath.Join(base, "master"), FreePort(t), "--repl-diskless-sync-delay", "0")
	replica := startRedisNode(t, bin, filepath.Join(base, "replica"), FreePort(t), "--repl-diskless-sync-delay", "0",
		"--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	s.nodes = []*redisNode{master, replica}
	for i := range 3 {
		port := FreePort(t)
		dir := filepath.Join(base, "sentinel"+strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// Sentinel rewrites its configuration file, so each gets its own.
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\nprotected-mode no\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %s 1000\n"+
			"sentinel failover-timeout %s 5000\n"+
			"sentinel parallel-syncs %s 1\n",
			port, dir, s.MasterName, master.port, s.MasterName, s.MasterName, s.MasterName)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		n := startRedisNode(t, sentinelBin, dir, port, conf)
		s.Addrs = append(s.Addrs, n.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitReplicaLinked(ctx, replica.Addr); err != nil {
		t.Fatalf("replica %s: %v (logs under %s)", replica.Addr, err, base)
	}
	for _, addr := range s.Addrs {
		if err := waitSentinelReplicas(ctx, addr, s.MasterName); err != nil {
			t.Fatalf("sentinel %s: %v (logs under %s)", addr, err, base)
		}
	}
	s.Client = redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: s.MasterName, SentinelAddrs: s.Addrs, ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { s.Client.Close() })
	return s
}

// waitSentinelReplicas waits until the sentinel lists a replica of master
// that is up: only then can it fail over.
func waitSentinelReplicas(ctx context.Context, addr, master string) error {
	sc := redis.NewSentinelClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer sc.Close()
	var last error
	for {
		replicas, err := sc.Replicas(ctx, master).Result()
		if err == nil && len(replicas) > 0 && replicas[0]["flags"] == "slave" {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("no healthy replica known (last error %v)", last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitReplicaLinked waits until the replica has finished its first sync:
// before that it answers reads with an empty data set.
func waitReplicaLinked(ctx context.Context, addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer c.Close()
	for {
		info, err := c.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not in sync with its master: %v %s", err, info)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// MasterAddr asks the first sentinel for the current master.
func (s *Sentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addrs[0], ContextTimeoutEnabled: true})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hp, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		t.Fatalf("asking sentinel for the master: %v", err)
	}
	return hp[0] + ":" + hp[1]
}

// ReplicaAddr returns the address of the data node that is not the master.
func (s *Sentinel) ReplicaAddr(t testing.TB) string {
	t.Helper()
	master := s.MasterAddr(t)
	for _, n := range s.nodes {
		if n.Addr != master {
			return n.Addr
		}
	}
	t.Fatal("no replica")
	return ""
}

// KillMaster kills the current master process and waits until the sentinels
// have promoted the replica; it returns the new master's address.
func (s *Sentinel) KillMaster(t testing.TB) string {
	t.Helper()
	old := s.MasterAddr(t)
	for _, n := range s.nodes {
		if n.Addr == old {
			n.stop()
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if addr := s.MasterAddr(t); addr != old {
			return addr
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("the sentinels did not promote the replica of %s within 60 s", old)
	return ""
}
