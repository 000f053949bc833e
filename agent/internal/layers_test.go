// Package internal_test holds the import rule of docs/architecture.md: the
// layers of the agent, checked on the imports of every non-test file.
package internal_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/certagent/certagent/"

// rule says which packages of the agent (directories below the module
// root) may import paths starting with one of prefixes.
type rule struct {
	what     string
	prefixes []string
	allowed  func(pkg string) bool
}

func only(pkgs ...string) func(string) bool {
	return func(pkg string) bool {
		for _, p := range pkgs {
			if pkg == p {
				return true
			}
		}
		return false
	}
}

func except(pkgs ...string) func(string) bool {
	in := only(pkgs...)
	return func(pkg string) bool { return !in(pkg) }
}

var rules = []rule{
	{what: "Redis I/O is the store's alone (the test harness and the benchmark driver seed Redis themselves)",
		prefixes: []string{"github.com/redis/go-redis/"},
		allowed:  only("agent/store", "agent/internal/testenv", "agent/cmd/certagent-bench")},
	{what: "ACME through lego is the ACME client's alone (the CLI routes lego's log and names DNS providers; the benchmark driver runs bare lego as its baseline)",
		prefixes: []string{"github.com/go-acme/lego/"},
		allowed:  only("agent/acmeclient", "agent/cmd/certagent", "agent/cmd/certagent-bench")},
	{what: "no package imports a command",
		prefixes: []string{module + "agent/cmd/"},
		allowed:  func(string) bool { return false }},
	{what: "the test harness is for tests only",
		prefixes: []string{module + "agent/internal/testenv", module + "agent/internal/schemadoc"},
		allowed: func(pkg string) bool {
			return pkg == "agent/cmd/certagent-bench" || strings.HasPrefix(pkg, "agent/internal/")
		}},
	{what: "names, backoff, clock and stages are leaves",
		prefixes: []string{module + "agent/"},
		allowed:  except("agent/names", "agent/internal/backoff", "agent/internal/clock", "agent/internal/stages")},
	{what: "the store knows no layer above it",
		prefixes: []string{module + "agent/acmeclient", module + "agent/manager", module + "agent/peer", module + "agent/telemetry",
			module + "agent/policy"},
		allowed: except("agent/store")},
	{what: "the ACME client knows no CLI, manager, policy, peer or telemetry",
		prefixes: []string{module + "agent/manager", module + "agent/policy", module + "agent/peer", module + "agent/telemetry"},
		allowed:  except("agent/acmeclient")},
	{what: "telemetry reports; it drives no order",
		prefixes: []string{module + "agent/manager", module + "agent/peer", module + "agent/acmeclient"},
		allowed:  except("agent/telemetry")},
	{what: "the manager and the peer sites meet only in the CLI (manager.Peers)",
		prefixes: []string{module + "agent/peer"},
		allowed:  except("agent/manager")},
	{what: "the policy (allow rules, ask, pre-flight) knows no ACME and no order",
		prefixes: []string{"github.com/go-acme/lego/", module + "agent/acmeclient", module + "agent/manager",
			module + "agent/peer", module + "agent/telemetry"},
		allowed: except("agent/policy")},
	{what: "the peer sites order nothing",
		prefixes: []string{module + "agent/manager"},
		allowed:  except("agent/peer")},
}

// imports maps each package directory of the agent to what its non-test
// files import.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(filepath.Join(root, "agent"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(rel)
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return err
			}
			out[pkg] = append(out[pkg], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out["agent/store"]) == 0 || len(out["agent/cmd/certagent"]) == 0 {
		t.Fatalf("read the imports of %d packages, without the store or the CLI: wrong root %s", len(out), root)
	}
	return out
}

// TestImportsFollowTheLayers fails on an import that crosses the layers of
// docs/architecture.md.
func TestImportsFollowTheLayers(t *testing.T) {
	pkgs := imports(t)
	names := make([]string, 0, len(pkgs))
	for pkg := range pkgs {
		names = append(names, pkg)
	}
	sort.Strings(names)
	for _, r := range rules {
		for _, pkg := range names {
			if r.allowed(pkg) {
				continue
			}
			for _, imp := range pkgs[pkg] {
				for _, prefix := range r.prefixes {
					if strings.HasPrefix(imp, prefix) && module+pkg != imp {
						t.Errorf("%s imports %s: %s", pkg, imp, r.what)
					}
				}
			}
		}
	}
}

// The rules catch what they are about: a go-redis import in the manager, a
// CLI import in the ACME client.
func TestLayerRulesCatchCrossings(t *testing.T) {
	crossings := map[string]string{
		"agent/manager":    "github.com/redis/go-redis/v9",
		"agent/acmeclient": module + "agent/manager",
		"agent/store":      module + "agent/telemetry",
		"agent/telemetry":  module + "agent/manager",
		"agent/peer":       module + "agent/cmd/certagent",
		"agent/policy":     "github.com/go-acme/lego/v4/acme",
	}
	for pkg, imp := range crossings {
		caught := false
		for _, r := range rules {
			for _, prefix := range r.prefixes {
				if strings.HasPrefix(imp, prefix) && !r.allowed(pkg) {
					caught = true
				}
			}
		}
		if !caught {
			t.Errorf("%s importing %s passes the rules", pkg, imp)
		}
	}
}
