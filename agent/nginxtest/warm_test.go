package nginxtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

const (
	servedFromLRU    = `certagent_nginx_certificates_served_total{source="worker_lru"}`
	servedFromShared = `certagent_nginx_certificates_served_total{source="shared_dict"}`
)

// startForReload is startWith the status location, a location telling the
// serving worker's pid, nginx's notices logged and the given settings (Lua
// expressions), once the node has read the changes stream: a new node's
// first read empties the shared dict (nothing says which changes it has
// seen).
func startForReload(t *testing.T, settings map[string]string) *env {
	t.Helper()
	e := startWith(t, testenv.NginxOptions{
		LuaConfig:     settings,
		ErrorLogLevel: "notice",
		HTTPServerExtra: "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-status.conf") + ";\n" +
			`location = /worker-pid { return 200 "$pid"; }`,
	})
	e.waitChangesRead()
	return e
}

// workerPID is the pid of the worker that answers a request now.
func (e *env) workerPID() string {
	e.t.Helper()
	return e.getBody("/worker-pid")
}

// hup sends nginx's master SIGHUP (a reload: a new configuration, new
// workers) and returns at once.
func (e *env) hup() {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(filepath.Dir(e.nginx.ConfPath), "nginx.pid"))
	if err != nil {
		e.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		e.t.Fatal(err)
	}
}

// awaitNewWorker waits until a worker other than old answers.
func (e *env) awaitNewWorker(old string) {
	e.t.Helper()
	waitFor(e.t, "a worker of the reload", func() bool { return e.workerPID() != old })
}

// TestReloadStartsWorkersWithTheNodesCertificates: after a reload, the
// certificates the node served before it are in the new workers' cache
// already (parsed once, by the master, which they inherit it from), not
// parsed again at each name's first handshake from the shared dict; with
// reload_warm = 0 they are.
func TestReloadStartsWorkersWithTheNodesCertificates(t *testing.T) {
	for _, tc := range []struct {
		warm            string
		fromLRU, shared float64
	}{
		{warm: "1", fromLRU: 3, shared: 0},
		{warm: "0", fromLRU: 0, shared: 3},
	} {
		t.Run("reload_warm="+tc.warm, func(t *testing.T) {
			e := startForReload(t, map[string]string{"reload_warm": tc.warm})
			names := []string{"a.warm.example.test", "b.warm.example.test", "c.warm.example.test"}
			leaves := map[string]leaf{}
			for _, name := range names {
				leaves[name] = newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
				e.store(name, leaves[name])
			}
			// Its changes entry, read after a handshake, would drop a
			// certificate from the shared dict.
			e.waitChangesRead()
			for _, name := range names {
				if c := e.mustHandshake(name); !c.Equal(leaves[name].cert) {
					t.Fatalf("%s: not its stored certificate before the reload", name)
				}
			}
			old := e.workerPID()
			before := e.scrape()
			e.hup()
			e.awaitNewWorker(old)
			for _, name := range names {
				if c := e.mustHandshake(name); !c.Equal(leaves[name].cert) {
					t.Fatalf("%s: not its stored certificate after the reload", name)
				}
			}
			after := e.scrape()
			fromLRU, shared := after[servedFromLRU]-before[servedFromLRU], after[servedFromShared]-before[servedFromShared]
			if fromLRU != tc.fromLRU || shared != tc.shared {
				t.Errorf("after the reload: %v served from the worker's cache and %v from the shared dict, want %v and %v",
					fromLRU, shared, tc.fromLRU, tc.shared)

			}
			logged := strings.Contains(e.nginx.ErrorLog(), "parsed 3 certificates of the shared dict for the new workers")
			if logged != (tc.warm != "0") {
				t.Errorf("the master's notice of the certificates it parsed: logged %v, want %v", logged, tc.warm != "0")
			}
		})
	}
}

// TestReloadForgetsWhatChangedWhileTheMasterParsed: a certificate deleted
// while the master parses the shared dict for the new workers, after it
// parsed that one, is not served by them: they follow the node's changes log
// from where it stood when the master began, not from their own start
// (which the deletion's event precedes). The master parses the most recently
// served certificates first, so the deleted one is the last handshake
// before the reload, and a thousand others keep the master busy meanwhile.
func TestReloadForgetsWhatChangedWhileTheMasterParsed(t *testing.T) {
	const others = 1000
	e := startForReload(t, map[string]string{"reload_warm": "30", "lru_size": "2000", "changes_interval": "0.05"})
	filler := newLeaf(t, "filler.warm.example.test", []string{"filler.warm.example.test"}, time.Now().Add(24*time.Hour))
	names := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				if c, err := e.handshake(name); err != nil || e.isFallback(c) {
					t.Errorf("%s: %v (fallback: %v)", name, err, e.isFallback(c))
				}
			}
		}()
	}
	const deleted = "deleted.warm.example.test"
	l := newLeaf(t, deleted, []string{deleted}, time.Now().Add(24*time.Hour))
	e.store(deleted, l)
	for i := range others {
		e.store(fmt.Sprintf("n%d.warm.example.test", i), filler)
	}
	e.waitChangesRead()
	for i := range others {
		names <- fmt.Sprintf("n%d.warm.example.test", i)
	}
	close(names)
	wg.Wait()
	if c := e.mustHandshake(deleted); !c.Equal(l.cert) {
		t.Fatal("not the stored certificate before the reload")
	}
	old := e.workerPID()
	offset := e.nginx.ErrorLogSize()
	e.hup()
	time.Sleep(100 * time.Millisecond)
	e.remove(deleted)
	e.awaitNewWorker(old)
	// The deletion must have reached the old workers' reader (every 50 ms)
	// before the master was done: else this test proves nothing.
	// The master must have parsed the deleted certificate (all of them: it
	// came first) and gone on past the deletion: else this test proves
	// nothing.
	var parsed int
	var took time.Duration
	waitFor(t, "the master's notice", func() bool {
		for _, line := range e.nginx.ErrorLogSince(offset) {
			if _, rest, ok := strings.Cut(line, "certagent: parsed "); ok {
				var ms int
				_, err := fmt.Sscanf(rest, "%d certificates of the shared dict for the new workers in %d ms", &parsed, &ms)
				took = time.Duration(ms) * time.Millisecond
				return err == nil
			}
		}
		return false
	})
	if parsed != others+1 || took < 400*time.Millisecond {
		t.Fatalf("the master parsed %d certificates in %v: want %d, for longer than the deletion took to reach the node",
			parsed, took, others+1)
	}
	waitFor(t, "the deleted certificate no longer served", func() bool {
		c, err := e.handshake(deleted)
		return err == nil && e.isFallback(c)
	})
}
