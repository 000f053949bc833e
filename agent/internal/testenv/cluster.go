package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisNode is one redis-server process: a Redis, or one of a Cluster or Sentinel setup.
type redisNode struct {
	Addr string
	port int
	dir  string
	cmd  *exec.Cmd
	args []string
}

func startRedisNode(t testing.TB, bin, dir string, port int, args ...string) *redisNode {
	t.Helper()
	n := &redisNode{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: dir, args: args}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n.start(t, bin)
	t.Cleanup(n.stop)
	return n
}

func (n *redisNode) start(t testing.TB, bin string) {
	t.Helper()
	logFile, err := os.OpenFile(filepath.Join(n.dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	args := n.args
	if len(args) == 0 || !strings.HasSuffix(args[0], ".conf") {
		args = append([]string{"--port", strconv.Itoa(n.port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", n.dir,
			"--daemonize", "no", "--protected-mode", "no"}, args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = n.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	n.cmd = cmd
	if err := WaitTCP(n.Addr, 10*time.Second); err != nil {
		n.stop()
		t.Fatalf("%s on %s: %v (log in %s)", bin, n.Addr, err, n.dir)
	}
}

func (n *redisNode) stop() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
	n.cmd = nil
}

// Cluster is a Redis Cluster of three masters (no replicas) started for one
// test from Debian's redis-server, its slots split evenly.
type Cluster struct {
	Addrs  []string // host:port of each master
	Client *redis.ClusterClient
}

// StartCluster starts three cluster-enabled redis-servers on free ports,
// assigns the slots and waits until every node reports the cluster ok.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := Require(t, "redis-server")
	base := t.TempDir()
	c := &Cluster{}
	var nodes []*redisNode
	for i := range 3 {
		n := startRedisNode(t, bin, filepath.Join(base, strconv.Itoa(i)), FreePort(t),
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
		nodes = append(nodes, n)
		c.Addrs = append(c.Addrs, n.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const slots = 16384
	for i, n := range nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr, ContextTimeoutEnabled: true})
		lo, hi := i*slots/len(nodes), (i+1)*slots/len(nodes)-1
		err := cl.ClusterAddSlotsRange(ctx, lo, hi).Err()
		if err == nil && i > 0 {
			err = cl.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(nodes[0].port)).Err()
		}
		cl.Close()
		if err != nil {
			t.Fatalf("setting up cluster node %s: %v", n.Addr, err)
		}
	}
	for _, n := range nodes {
		if err := waitClusterOK(ctx, n.Addr, len(nodes)); err != nil {
			t.Fatalf("cluster node %s: %v (logs under %s)", n.Addr, err, base)
		}
	}
	c.Client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Client.Close() })
	return c
}

// waitClusterOK polls CLUSTER INFO until the node knows all nodes and all
// slots are served: the gossip that spreads MEET takes a moment.
func waitClusterOK(ctx context.Context, addr string, nodes int) error {
	cl := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer cl.Close()
	var last string
	for {
		info, err := cl.ClusterInfo(ctx).Result()
		if err == nil {
			last = info
			if strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(nodes)+"\r") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ready: %v; last CLUSTER INFO: %s", err, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// MasterFor returns the address of the master serving key's slot.
func (c *Cluster) MasterFor(t testing.TB, key string) string {
	t.Helper()
	ctx := context.Background()
	slot, err := c.Client.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	ranges, err := c.Client.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if int64(r.Start) <= slot && slot <= int64(r.End) && len(r.Nodes) > 0 {
			return r.Nodes[0].Addr
		}
	}
	t.Fatalf("no node serves slot %d of %s", slot, key)
	return ""
}
