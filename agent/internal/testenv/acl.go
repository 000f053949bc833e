package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// ACLFromDoc returns the arguments of the `ACL SETUSER <user> ...` line of
// docs/redis-acl.md, with the key prefix certagent: replaced by prefix and
// the password placeholder (>XXX-PASSWORD) by password, so tests run the
// documented line itself. A selector "(...)" stays one argument.
func ACLFromDoc(t testing.TB, user, prefix, password string) []any {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(RepoRoot(), "docs", "redis-acl.md"))
	if err != nil {
		t.Fatal(err)
	}
	head := "ACL SETUSER " + user + " "
	var line string
	for _, l := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(l, head) {
			if line != "" {
				t.Fatalf("docs/redis-acl.md has two lines for %s", user)
			}
			line = l
		}
	}
	if line == "" {
		t.Fatalf("docs/redis-acl.md has no line starting %q", head)
	}
	var args []any
	var selector []string
	for _, f := range strings.Fields(line) {
		f = strings.ReplaceAll(f, "certagent:", prefix)
		if strings.HasPrefix(f, ">") && strings.HasSuffix(f, "-PASSWORD") {
			f = ">" + password
		}
		switch {
		case selector != nil:
			selector = append(selector, f)
			if strings.HasSuffix(f, ")") {
				args = append(args, strings.Join(selector, " "))
				selector = nil
			}
		case strings.HasPrefix(f, "(") && !strings.HasSuffix(f, ")"):
			selector = []string{f}
		default:
			args = append(args, f)
		}
	}
	if selector != nil {
		t.Fatalf("unclosed selector in %q", line)
	}
	return args
}

// SetACL runs the documented ACL line for user on every client (each node
// of a Cluster or replicated setup needs its own users).
func SetACL(t testing.TB, user, prefix, password string, clients ...*redis.Client) {
	t.Helper()
	args := ACLFromDoc(t, user, prefix, password)
	for _, c := range clients {
		if err := c.Do(context.Background(), args...).Err(); err != nil {
			t.Fatalf("%v on %s: %v", args, c.Options().Addr, err)
		}
	}
}
