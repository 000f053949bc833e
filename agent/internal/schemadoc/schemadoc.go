// Package schemadoc reads the key table of docs/redis-schema.md so that tests of
// both halves (Go and Lua through nginx) check the keys they use against the
// document rather than against each other.
package schemadoc

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Entry is one row of the key table.
type Entry struct {
	ID       string
	Pattern  string // e.g. "certagent:cert:<name>"
	Type     string // Redis TYPE: hash, string, stream, zset
	TTL      string
	Encoding string
}

// Path returns the location of docs/redis-schema.md in this checkout.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "docs", "redis-schema.md")
}

// Load parses the key table.
func Load() (map[string]Entry, error) {
	f, err := os.Open(Path())
	if err != nil {
		return nil, fmt.Errorf("reading the schema document: %w", err)
	}
	defer f.Close()
	entries := map[string]Entry{}
	inTable := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "| id | key |") {
			inTable = true
			continue
		}
		if !inTable {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 7 || strings.HasPrefix(strings.TrimSpace(cells[0]), "---") {
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		entries[cells[0]] = Entry{
			ID:       cells[0],
			Pattern:  strings.Trim(cells[1], "`"),
			Type:     cells[2],
			TTL:      cells[5],
			Encoding: cells[6],
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("no key table found in %s", Path())
	}
	return entries, nil
}

// Key expands the pattern of id with the given prefix (replacing the documented
// default "certagent:") and placeholder values, e.g. Key(e, "p:", "name", "a.example").
func (e Entry) Key(prefix string, vars ...string) (string, error) {
	if len(vars)%2 != 0 {
		return "", fmt.Errorf("odd number of placeholder arguments")
	}
	key := strings.TrimPrefix(e.Pattern, "certagent:")
	for i := 0; i < len(vars); i += 2 {
		placeholder := "<" + vars[i] + ">"
		if !strings.Contains(key, placeholder) {
			return "", fmt.Errorf("key %s has no placeholder %s", e.ID, placeholder)
		}
		key = strings.ReplaceAll(key, placeholder, vars[i+1])
	}
	if strings.ContainsAny(key, "<>") {
		return "", fmt.Errorf("key %s: placeholders left in %q", e.ID, key)
	}
	return prefix + key, nil
}
