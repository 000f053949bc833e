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
			`location = /worker-pid { return 200 "$pid"; }` + "\n" + dictOrderLocation,
	})
	e.waitChangesRead()
	return e
}

// dictOrderLocation lists the certificates of the shared dict, least
// recently used first (what a full dict evicts first).
const dictOrderLocation = `
        location = /_test/dict-order {
            content_by_lua_block {
                local names = {}
                for _, key in ipairs(ngx.shared.certagent_certs:get_keys(0)) do
                    if key:sub(1, 2) == "c:" then
                        names[#names + 1] = key:sub(3)
                    end
                end
                ngx.print(table.concat(names, " "))
            }
        }
`

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
			order := e.getBody("/_test/dict-order")
			e.hup()
			e.awaitNewWorker(old)
			// The master's reads leave the dict's order as it was.
			if after := e.getBody("/_test/dict-order"); after != order {
				t.Errorf("the shared dict's order after the reload: %q, want %q as before", after, order)
			}
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
// read certificates first, so the deleted one is the last handshake before
// the reload, and two thousand others keep the master busy meanwhile.
func TestReloadForgetsWhatChangedWhileTheMasterParsed(t *testing.T) {
	const others = 2000
	e := startForReload(t, map[string]string{"reload_warm": "5", "lru_size": "3000", "changes_interval": "0.05"})
	filler := newLeaf(t, "filler.warm.example.test", []string{"filler.warm.example.test"}, time.Now().Add(24*time.Hour))
	const deleted = "deleted.warm.example.test"
	l := newLeaf(t, deleted, []string{deleted}, time.Now().Add(24*time.Hour))
	e.store(deleted, l)
	for i := range others {
		e.store(fmt.Sprintf("n%d.warm.example.test", i), filler)
	}
	e.waitChangesRead()
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
	logged := func(text string) bool {
		for _, line := range e.nginx.ErrorLogSince(offset) {
			if strings.Contains(line, text) {
				return true
			}
		}
		return false
	}
	waitFor(t, "the master to begin parsing", func() bool { return logged("certagent: parsing the shared dict") })
	e.remove(deleted)
	e.waitChangesRead() // by the old worker, the node's reader
	if logged("certagent: parsed ") {
		t.Fatal("the master was done before the deletion reached the node: this test needs a longer parse")
	}
	e.awaitNewWorker(old)
	var parsed int
	waitFor(t, "the master's notice", func() bool {
		for _, line := range e.nginx.ErrorLogSince(offset) {
			if _, rest, ok := strings.Cut(line, "certagent: parsed "); ok {
				_, err := fmt.Sscanf(rest, "%d certificates", &parsed)
				return err == nil
			}
		}
		return false
	})
	if parsed != others+1 {
		t.Fatalf("the master parsed %d certificates, want %d: the deleted one among them", parsed, others+1)
	}
	if c := e.mustHandshake(deleted); !e.isFallback(c) {
		t.Fatalf("the new worker served the certificate deleted while the master parsed")
	}
}

// TestRespawnedWorkerDropsWhatChangedSinceTheReload: a worker the master
// forks again after a crash inherits the certificates the master parsed at
// the reload, some of them changed since; it drops those before its first
// handshake, not at its first timed read of the log.
func TestRespawnedWorkerDropsWhatChangedSinceTheReload(t *testing.T) {
	const name = "respawn.warm.example.test"
	e := startForReload(t, map[string]string{"reload_warm": "1"})
	l := newLeaf(t, name, []string{name}, time.Now().Add(24*time.Hour))
	e.store(name, l)
	e.waitChangesRead()
	if c := e.mustHandshake(name); !c.Equal(l.cert) {
		t.Fatal("not the stored certificate before the reload")
	}
	old := e.workerPID()
	e.hup()
	e.awaitNewWorker(old)
	if c := e.mustHandshake(name); !c.Equal(l.cert) {
		t.Fatal("not the stored certificate after the reload")
	}
	e.remove(name)
	e.waitChangesRead()
	if c := e.mustHandshake(name); !e.isFallback(c) {
		t.Fatal("the deleted certificate is served after the node read its deletion")
	}
	crashed := e.workerPID()
	pid, err := strconv.Atoi(crashed)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.awaitNewWorker(crashed)
	if c := e.mustHandshake(name); !e.isFallback(c) {
		t.Fatal("the worker forked again after a crash served the certificate deleted since the reload")
	}
}
