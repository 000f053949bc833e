package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

const (
	agentPassword = "agent-pw"
	nginxPassword = "nginx-pw"
)

// modeStack is Pebble, the agent binary and the environment every agent of
// a Redis mode test shares; the test adds Redis and nginx.
type modeStack struct {
	faultStack
	httpPort int
}

func startModeStack(t *testing.T) *modeStack {
	t.Helper()
	m := &modeStack{httpPort: testenv.FreePort(t)}
	m.agent = testenv.BuildBinary(t, "./agent/cmd/certagent")
	m.pebble = testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: m.httpPort})
	m.proxy = testenv.StartCAProxy(t, m.pebble)
	m.dog = startPebbleWatchdog(t, m.pebble)
	return m
}

func (m *modeStack) agentEnv(redisEnv ...string) []string {
	return append(append(os.Environ(),
		"CERTAGENT_ACME_DIRECTORY="+m.proxy.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+m.proxy.CARootsFile,
		"CERTAGENT_EMAIL=ops@example.test",
		"CERTAGENT_ALLOW=*.modes.test",
	), redisEnv...)
}

func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
}

// The agents and nginx on a three-node Redis Cluster, each as its ACL user:
// the agent through the cluster client with the hash-tagged prefix, nginx on
// the master that serves the prefix's slot.
func TestRedisCluster(t *testing.T) {
	m := startModeStack(t)
	c := testenv.StartCluster(t)
	const prefix = "{certagent}:"
	for _, addr := range c.Addrs {
		cl := nodeClient(addr)
		testenv.SetACL(t, "certagent-agent", prefix, agentPassword, cl)
		testenv.SetACL(t, "certagent-nginx", prefix, nginxPassword, cl)
		cl.Close()
	}
	st := store.New(c.Client, store.Keys{Prefix: prefix})
	slotMaster := c.MasterFor(t, st.Keys().Requests())
	m.nginx = testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL: "redis://certagent-nginx:" + nginxPassword + "@" + slotMaster + "/0", KeyPrefix: prefix, HTTPPort: m.httpPort,
	})
	env := m.agentEnv(
		"CERTAGENT_REDIS_URL=redis://certagent-agent:"+agentPassword+"@"+c.Addrs[0]+"/0",
		"CERTAGENT_REDIS_CLUSTER="+strings.Join(c.Addrs, ","),
	)

	// Without a hash tag the agent refuses to start: its transactions
	// would span slots.
	m.env = append(env, "CERTAGENT_KEY_PREFIX=certagent:")
	if _, stderr, code := (&stack{agent: m.agent, env: m.env}).cli(t, "run"); code != 2 || !strings.Contains(stderr, "hash tag") {
		t.Errorf("run with a prefix without hash tag in Cluster mode: exit %d, %q; want 2 and the reason", code, stderr)
	}

	m.env = append(env, "CERTAGENT_KEY_PREFIX="+prefix)
	for _, name := range []string{"agent-0", "agent-1"} {
		m.newAgent(t, name)
	}
	want := makeNames("c", "modes.test", 12)
	m.request(t, want)
	took := m.waitAllStored(t, st, want, 60*time.Second)
	waitDrained(t, c.Client, st.Keys().Requests(), 30*time.Second)
	for _, n := range want[:3] {
		waitServedReal(t, &m.faultStack, n)
	}
	if o := m.proxy.Overlaps(); len(o) > 0 {
		t.Errorf("overlapping orders: %v", o)
	}
	t.Logf("Cluster of 3 masters, all keys in slot of %s on %s: %d names issued in %s; %s",
		prefix, slotMaster, len(want), took.Round(100*time.Millisecond), m.orderReport())
}

// The agents through Sentinel and two nginx, one on the master and one on
// the replica (reads from a local replica), each as its ACL user. The
// replica's nginx answers the challenges and serves the certificates; then
// the master is killed, the sentinels promote the replica, and the agents
// follow: names recorded on the new master are issued too.
func TestRedisSentinel(t *testing.T) {
	m := startModeStack(t)
	s := testenv.StartSentinel(t)
	const prefix = "certagent:"
	master, replica := s.MasterAddr(t), s.ReplicaAddr(t)
	for _, addr := range []string{master, replica} {
		cl := nodeClient(addr)
		// Users are not replicated: every node needs them.
		testenv.SetACL(t, "certagent-agent", prefix, agentPassword, cl)
		testenv.SetACL(t, "certagent-nginx", prefix, nginxPassword, cl)
		cl.Close()
	}
	st := store.New(s.Client, store.Keys{Prefix: prefix})
	// The replica's nginx gets the port Pebble validates on: challenges are
	// answered from the replica.
	onReplica := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL: "redis://certagent-nginx:" + nginxPassword + "@" + replica + "/0", HTTPPort: m.httpPort,
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("error log of the replica's nginx:\n%s", onReplica.ErrorLog())
		}
	})
	onMaster := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL: "redis://certagent-nginx:" + nginxPassword + "@" + master + "/0",
	})
	m.env = m.agentEnv(
		"CERTAGENT_REDIS_URL=redis://certagent-agent:"+agentPassword+"@ignored:1/0",
		"CERTAGENT_REDIS_SENTINEL_MASTER="+s.MasterName,
		"CERTAGENT_REDIS_SENTINELS="+strings.Join(s.Addrs, ","),
		// The replica's nginx answers the CA: tokens must be there first.
		"CERTAGENT_REDIS_WAIT_REPLICAS=1",
	)
	for _, name := range []string{"agent-0", "agent-1"} {
		m.newAgent(t, name)
	}

	before := makeNames("b", "modes.test", 8)
	m.nginx = onMaster
	m.request(t, before)
	took := m.waitAllStored(t, st, before, 60*time.Second)
	m.nginx = onReplica
	for _, n := range before {
		waitServedReal(t, &m.faultStack, n)
	}

	newMaster := s.KillMaster(t)
	if newMaster != replica {
		t.Fatalf("promoted %s, want the replica %s", newMaster, replica)
	}
	after := makeNames("a", "modes.test", 8)
	m.request(t, after) // the replica's nginx is on the master now
	took2 := m.waitAllStored(t, st, append(append([]string{}, before...), after...), 90*time.Second)
	for _, n := range after {
		waitServedReal(t, &m.faultStack, n)
	}
	if o := m.proxy.Overlaps(); len(o) > 0 {
		t.Errorf("overlapping orders: %v", o)
	}
	pending, err := s.Client.XPending(context.Background(), st.Keys().Requests(), "certagent").Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Sentinel: %d names issued in %s on %s; failover to %s; %d more in %s (%d entries pending); %s",
		len(before), took.Round(100*time.Millisecond), master, newMaster, len(after), took2.Round(100*time.Millisecond), pending.Count, m.orderReport())
}

// The agent over TLS (rediss://) with --redis-ca naming the private CA of
// Redis's certificate, as its ACL user.
func TestRedisTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "redis test CA", IsCA: true})
	leaf := testenv.NewCert(t, testenv.CertSpec{CommonName: "127.0.0.1", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Parent: ca})
	caFile, _ := ca.Write(t, dir, "ca")
	certFile, keyFile := leaf.Write(t, dir, "redis")
	port := testenv.FreePort(t)
	// The plain port stays open too (testenv waits on it); the agent and
	// the test's own client use the TLS port.
	testenv.StartRedisArgs(t, "--tls-port", strconv.Itoa(port),
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "no")
	addr := "127.0.0.1:" + strconv.Itoa(port)
	pool := x509.NewCertPool()
	pool.AddCert(ca.X509)
	admin := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, ContextTimeoutEnabled: true})
	defer admin.Close()
	testenv.SetACL(t, "certagent-agent", "certagent:", agentPassword, admin)

	s := &stack{agent: testenv.BuildBinary(t, "./agent/cmd/certagent")}
	s.env = append(os.Environ(), "CERTAGENT_REDIS_URL=rediss://certagent-agent:"+agentPassword+"@"+addr+"/0",
		"CERTAGENT_REDIS_CA="+caFile)
	if _, stderr, code := s.cli(t, "allow", "add", "tls.example.test"); code != 0 {
		t.Fatalf("allow add over TLS: exit %d: %s", code, stderr)
	}
	if ok, err := admin.SIsMember(context.Background(), "certagent:allow", "tls.example.test").Result(); err != nil || !ok {
		t.Errorf("the rule is not in Redis: %v %v", ok, err)
	}
	// Without the CA the server's certificate is not trusted.
	s.env = append(os.Environ(), "CERTAGENT_REDIS_URL=rediss://certagent-agent:"+agentPassword+"@"+addr+"/0")
	if _, stderr, code := s.cli(t, "allow", "add", "other.example.test"); code == 0 || !strings.Contains(stderr, "certificate") {
		t.Errorf("allow add without --redis-ca: exit %d, %q; want a certificate error", code, stderr)
	}
}
