package peer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

func TestNewFleetChecksItsConfiguration(t *testing.T) {
	st := store.New(nil, store.Keys{})
	good := func() Config {
		return Config{Site: "a", Secret: fleetSecret, Store: st, Peers: []PeerConfig{
			{ID: "b", URL: "https://b.example:8443"}, {ID: "c", URL: "https://c.example:8443"}}}
	}
	f, err := NewFleet(good())
	if err != nil {
		t.Fatal(err)
	}
	if f.quorum != 2 || f.cfg.TokenRule != TokenRuleMajority || f.cfg.Timeout != DefaultTimeout ||
		f.cfg.SyncInterval != DefaultSyncInterval || f.cfg.ProbeInterval != DefaultProbeInterval || f.cfg.LeaseTTL != store.LockTTL {
		t.Errorf("defaults: quorum %d, %+v", f.quorum, f.cfg)
	}
	if states := f.States(); len(states) != 2 || states[0].ID != "b" || states[1].URL != "https://c.example:8443" || states[0].Up {
		t.Errorf("initial states %+v", states)
	}
	for _, tc := range []struct {
		what   string
		change func(*Config)
	}{
		{"no store", func(c *Config) { c.Store = nil }},
		{"bad site id", func(c *Config) { c.Site = "A" }},
		{"short secret", func(c *Config) { c.Secret = []byte("short") }},
		{"no peers", func(c *Config) { c.Peers = nil }},
		{"self among peers", func(c *Config) { c.Peers[1].ID = "a" }},
		{"duplicate peer", func(c *Config) { c.Peers[1].ID = "b" }},
		{"bad peer id", func(c *Config) { c.Peers[1].ID = "c:1" }},
		{"plain HTTP", func(c *Config) { c.Peers[1].URL = "http://c.example:8443" }},
		{"quorum too large", func(c *Config) { c.Quorum = 4 }},
		{"negative quorum", func(c *Config) { c.Quorum = -1 }},
		{"unknown token rule", func(c *Config) { c.TokenRule = "most" }},
		{"lease TTL under 3 s", func(c *Config) { c.LeaseTTL = time.Second }},
		{"lease TTL over the peers' cap", func(c *Config) { c.LeaseTTL = MaxLeaseTTL + time.Second }},
	} {
		cfg := good()
		tc.change(&cfg)
		if _, err := NewFleet(cfg); err == nil {
			t.Errorf("%s: accepted", tc.what)
		}
	}
	cfg := good()
	cfg.Quorum, cfg.TokenRule = 3, TokenRuleAll
	if f, err := NewFleet(cfg); err != nil || f.quorum != 3 {
		t.Errorf("quorum of every site: %v", err)
	}
}

func TestParsePeersAndThePeersFile(t *testing.T) {
	got, err := ParsePeers([]string{" b=https://b.example:8443 ", "", "c = https://c.example"})
	if err != nil || len(got) != 2 || got[0] != (PeerConfig{ID: "b", URL: "https://b.example:8443"}) ||
		got[1] != (PeerConfig{ID: "c", URL: "https://c.example"}) {
		t.Errorf("ParsePeers = %+v, %v", got, err)
	}
	for _, bad := range []string{"https://b.example", "B=https://b.example", "b=http://b.example", "b="} {
		if _, err := ParsePeers([]string{bad}); err == nil {
			t.Errorf("ParsePeers(%q) accepted", bad)
		}
	}

	path := filepath.Join(t.TempDir(), "peers")
	os.WriteFile(path, []byte("# the other sites\nb=https://b.example:8443\n\n  c=https://c.example:8443  # the backup site\n"), 0o600)
	got, err = ReadPeersFile(path)
	if err != nil || len(got) != 2 || got[1].ID != "c" || got[1].URL != "https://c.example:8443" {
		t.Errorf("ReadPeersFile = %+v, %v", got, err)
	}
	os.WriteFile(path, []byte("b=https://b.example:8443\nc=ftp://c.example\n"), 0o600)
	if _, err := ReadPeersFile(path); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("a bad second line: %v, want the line number", err)
	}
	if _, err := ReadPeersFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing file was accepted")
	}
}
