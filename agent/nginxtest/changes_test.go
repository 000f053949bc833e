package nginxtest

import (
	"context"
	"fmt"
	"os"
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
