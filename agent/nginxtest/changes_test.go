package nginxtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// readerWindow is how long the Redis commands of an idle node are counted.
const readerWindow = 10 * time.Second

// TestOneChangesReaderPerNode: four workers read the changes stream as one
// (certagent.changes): an idle node sends one round trip a changes_interval,
// not one per worker, and a renewal still reaches every worker's LRU.
//
// With CERTAGENT_BENCH_BASELINE_LUA naming a directory of another version's
// Lua (its certagent/*.lua), a second node runs that Lua over the same
// window, and the test logs both rates (docs/benchmarks.md).
func TestOneChangesReaderPerNode(t *testing.T) {
	opts := testenv.NginxOptions{WorkerProcesses: 4, LuaConfig: map[string]string{"cache_ttl": "3600"}}
	e := startWith(t, opts)
	var base *env
	if dir := os.Getenv("CERTAGENT_BENCH_BASELINE_LUA"); dir != "" {
		baseOpts := opts
		baseOpts.LuaPathPrefix = dir
		base = startWith(t, baseOpts)
	}
	e.waitChangesRead()
	// The window opens once the reader polls at its pace (two more reads):
	// the start-up's own commands (every worker's first poll, the index's
	// build) are behind it, however long a loaded machine took for them.
	polls := e.commands("xread")
	waitFor(t, "two more reads of the changes stream", func() bool { return e.commands("xread") >= polls+2 })
	nodes := []*env{e}
	if base != nil {
		nodes = append(nodes, base)
	}
	before := make([]int64, len(nodes))
	for i, n := range nodes {
		before[i] = n.allCommands()
	}
	time.Sleep(readerWindow)
	perSecond := make([]float64, len(nodes))
	for i, n := range nodes {
		perSecond[i] = float64(n.allCommands()-before[i]) / readerWindow.Seconds()
	}
	t.Logf("idle node, 4 workers, changes_interval 1 s: %.1f Redis commands/s", perSecond[0])
	if base != nil {
		t.Logf("baseline Lua (%s), same window: %.1f Redis commands/s; saved %.1f/s (%.2fx fewer)",
			os.Getenv("CERTAGENT_BENCH_BASELINE_LUA"), perSecond[1], perSecond[1]-perSecond[0], perSecond[1]/perSecond[0])
	}
	// One reader: XINFO and XREAD a second, 20 in the window; a reader per
	// worker would be 80. The bounds leave room for a loaded machine (a
	// late timer, a reader replaced), not for a second reader all along.
	if n := perSecond[0] * readerWindow.Seconds(); n > 40 || n < 4 {
		t.Errorf("%v commands in %s from an idle node of 4 workers, want about 20 (one reader)", n, readerWindow)
	}

	e.renewalReachesEveryWorker("renew4.example.test", 40, 40)
}

// allCommands sums the calls of every Redis command but INFO (the
// counting's own) since Redis started (INFO commandstats).
func (e *env) allCommands() int64 {
	e.t.Helper()
	info, err := e.redis.Client.InfoMap(context.Background(), "commandstats").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	var sum int64
	for name, stats := range info["Commandstats"] {
		if name == "cmdstat_info" {
			continue
		}
		var calls int64
		if _, err := fmt.Sscanf(stats, "calls=%d", &calls); err != nil {
			e.t.Fatalf("commandstats %s: %q: %v", name, stats, err)
		}
		sum += calls
	}
	return sum
}

// holdLocation lets a test catch a worker before its first read of the
// node's log of changes (certagent.changes), make it cache a certificate and
// hold it there. /_test/hold?name= answers "reader" from the worker reading
// the changes stream and "late" from a worker that has read the log already;
// in any other it looks name up as a handshake would (from the shared dict,
// into its LRU, without yielding) and blocks it, its timers with it, until
// /_test/release, then answers "held". The reader answers after a moment's
// block, for the next connections to go to another worker. /_test/held names the held worker's
// pid, answered by another. /_test/pid names the worker answering.
const holdLocation = `
        location = /_test/hold {
            content_by_lua_block {
                local dict = ngx.shared.certagent_certs
                local function block(seconds, done)
                    local deadline = ngx.now() + seconds
                    while not done() and ngx.now() < deadline do
                        ngx.update_time()
                    end
                end
                if dict:get("changes:reader") == ngx.worker.pid() then
                    -- Busy a moment: the next connections go to the others.
                    block(0.05, function() return false end)
                    return ngx.print("reader")
                end
                if require("certagent.changes").position() ~= nil then
                    return ngx.print("late")
                end
                local name = ngx.var.arg_name
                if require("certagent.ssl").state(name) ~= "yes" or not require("certagent.cache").held(name) then
                    return ngx.print("uncached")
                end
                dict:set("test:held", ngx.worker.pid())
                block(20, function() return dict:get("test:release") end)
                ngx.print("held")
            }
        }
        location = /_test/held {
            content_by_lua_block {
                ngx.print(ngx.shared.certagent_certs:get("test:held") or "")
            }
        }
        location = /_test/release {
            content_by_lua_block {
                ngx.shared.certagent_certs:set("test:release", true)
            }
        }
        location = /_test/pid {
            content_by_lua_block {
                ngx.print(ngx.worker.pid(), " ", ngx.shared.certagent_certs:get("changes:reader"))
            }
        }
`

// getBody returns the body of a GET of path on the plain HTTP server.
func (e *env) getBody(path string) string {
	e.t.Helper()
	resp, err := http.Get("http://" + e.nginx.HTTPAddr + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(body)
}

// TestNewWorkerFollowsChangesFromItsStart: a worker that cached a
// certificate before its first read of the node's log (a follow period
// after its start, later on a loaded machine) drops it all the same when the
// reader published its deletion before that read.
func TestNewWorkerFollowsChangesFromItsStart(t *testing.T) {
	const name = "early.example.test"
	e := startWith(t, testenv.NginxOptions{WorkerProcesses: 2, HTTPServerExtra: holdLocation})
	e.store(name, newLeaf(t, "early", []string{name}, time.Now().Add(24*time.Hour)))
	e.waitChangesRead()
	e.mustHandshake(name) // into the shared dict
	e.holdNewWorker(name)
	e.remove(name)
	// Answered by the reader: the held worker takes no connection.
	e.waitChangesRead()
	e.getBody("/_test/release")
	fallback := e.nginx.FallbackCert.Subject.CommonName
	inARow := 0
	e.servedLoop(name, "the deleted certificate to go from the worker held before its first read of the log",
		func(cn string) bool { return cn == "early" || cn == fallback },
		func(cn string) bool {
			if cn != fallback {
				inARow = 0
				return false
			}
			inARow++
			return inARow >= 20
		})
}

// holdNewWorker kills a worker other than the reader and holds its
// replacement, which nginx starts at once, with name cached before its first
// read of the log (holdLocation).
func (e *env) holdNewWorker(name string) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		// The reader's pid, or "nil" while no worker holds the lock (a
		// loaded machine can let it lapse): any worker may be killed then.
		var pid int
		var reader string
		if _, err := fmt.Sscan(e.getBody("/_test/pid"), &pid, &reader); err != nil {
			e.t.Fatal(err)
		}
		if strconv.Itoa(pid) == reader {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			e.t.Fatal(err)
		}
		// Attempts in parallel, as the reader answers its own after a block,
		// until one holds the new worker or they all come back.
		const attempts = 20
		answers := make(chan string, attempts)
		for i := 0; i < attempts; i++ {
			go func() {
				resp, err := http.Get("http://" + e.nginx.HTTPAddr + "/_test/hold?name=" + name)
				if err != nil {
					answers <- err.Error()
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				answers <- string(body)
			}()
			time.Sleep(5 * time.Millisecond)
		}
		for back := 0; back < attempts; {
			select {
			case body := <-answers:
				if body != "reader" && body != "late" {
					e.t.Fatalf("/_test/hold: %q", body)
				}
				back++
			case <-time.After(10 * time.Millisecond):
			}
			if e.getBody("/_test/held") != "" {
				return
			}
		}
	}
	e.t.Fatal("no new worker could be held before its first read of the log within 15 s")
}
