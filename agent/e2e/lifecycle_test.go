package e2e

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// startLifecycleStack is startStack with extra Pebble profiles.
func startLifecycleStack(t *testing.T, profiles map[string]time.Duration) *stack {
	t.Helper()
	s := &stack{redis: testenv.StartRedis(t), agent: testenv.BuildBinary(t, "./agent/cmd/certagent")}
	httpPort := testenv.FreePort(t)
	s.pebble, s.ca = startCA(t, testenv.PebbleOptions{HTTPPort: httpPort, Profiles: profiles})
	s.nginx = testenv.StartNginx(t, testenv.NginxOptions{RedisURL: s.redis.URL, HTTPPort: httpPort})
	profile := ""
	if len(profiles) > 0 {
		// Pebble picks a random profile for orders that name none.
		profile = "default"
	}
	s.env = append(os.Environ(),
		"CERTAGENT_REDIS_URL="+s.redis.URL,
		"CERTAGENT_ACME_DIRECTORY="+s.ca.DirectoryURL,
		"CERTAGENT_CA_ROOTS="+s.ca.CARootsFile,
		"CERTAGENT_EMAIL=ops@example.test",
		"CERTAGENT_PROFILE="+profile,
	)
	return s
}

// runDaemon runs `certagent run` with extra arguments until the test ends
// and returns the path of its log.
func (s *stack) runDaemon(t *testing.T, args ...string) string {
	t.Helper()
	return s.startAgent(t, append([]string{"--consumer", "e2e", "--renew-interval", "1s"}, args...)...).logPath
}

// waitServed polls handshakes for name until accept returns true for the
// served chain, or fails the test after limit.
func (s *stack) waitServed(t *testing.T, name string, limit time.Duration, what string, accept func([]*x509.Certificate) bool) []*x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		chain := s.handshake(t, name)
		if accept(chain) {
			return chain
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: nginx still serves serial %s for %s after %s", what, chain[0].SerialNumber.Text(16), name, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type shown struct {
	Name        string    `json:"name"`
	Serial      string    `json:"serial"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	Fingerprint string    `json:"fingerprint_sha256"`
	Status      string    `json:"status"`
}

func (s *stack) show(t *testing.T, name string) (shown, bool) {
	t.Helper()
	out, errOut, code := s.cli(t, "show", "--json", name)
	if code == 1 {
		return shown{}, false
	}
	var v shown
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Fatalf("show %s exited %d: %s%s", name, code, out, errOut)
	}
	return v, true
}

// The running daemon renews a certificate from a one-minute profile before
// it expires, and nginx serves the new serial without a reload.
func TestDaemonRenewsAShortLivedCertificateBeforeItExpires(t *testing.T) {
	s := startLifecycleStack(t, map[string]time.Duration{"oneminute": time.Minute})
	logPath := s.runDaemon(t, "--allow", "*.example.test", "--profile", "oneminute")

	const name = "short.example.test"
	s.handshake(t, name) // recorded in the stream; the agent orders it
	first := s.waitServed(t, name, 15*time.Second, "first issuance", func(c []*x509.Certificate) bool { return !isFallback(s, c) })
	if life := first[0].NotAfter.Sub(first[0].NotBefore); life > time.Minute {
		t.Fatalf("lifetime %s: the profile was not applied", life)
	}
	// Pebble's ARI window for it spans its whole life; the renewal comes
	// within it, and nginx follows the stored record.
	renewed := s.waitServed(t, name, time.Until(first[0].NotAfter)+45*time.Second, "renewal",
		func(c []*x509.Certificate) bool {
			return !isFallback(s, c) && c[0].SerialNumber.Cmp(first[0].SerialNumber) != 0
		})
	if err := s.verifies(t, renewed, name); err != nil {
		t.Fatalf("the renewed certificate does not verify: %v", err)
	}
	if !renewed[0].NotBefore.Before(first[0].NotAfter) {
		t.Errorf("the successor was issued at %s, after the first certificate expired at %s", renewed[0].NotBefore, first[0].NotAfter)
	}
	logText, _ := os.ReadFile(logPath)
	if !strings.Contains(string(logText), "certificate renewed") || strings.Contains(string(logText), "PRIVATE KEY") {
		t.Errorf("agent log lacks the renewal (or shows a key):\n%s", logText)
	}
}

// With a window set at the CA far from the lifetime rule's time (a 90-day
// certificate, a window seconds from now), the daemon renews in that window
// and the CA records the order as replacing the old certificate.
func TestRenewalHonoursTheCAWindow(t *testing.T) {
	s := startLifecycleStack(t, nil)
	const name = "ari.example.test"
	if _, errOut, code := s.cli(t, "issue", name); code != 0 {
		t.Fatalf("issue exited %d: %s", code, errOut)
	}
	old, _ := s.show(t, name)
	chain := s.storedChain(t, name)
	start, end := time.Now().Add(3*time.Second), time.Now().Add(6*time.Second)
	s.pebble.SetRenewalInfo(t, chain, start, end)

	// At debug level the agent logs the certificate the CA recorded the order as replacing.
	logPath := s.runDaemon(t, "--log-level", "debug")
	var now shown
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		now, _ = s.show(t, name)
		if now.Serial != old.Serial {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renewed 30 s after the start of a window of %s..%s", start.Format(time.RFC3339), end.Format(time.RFC3339))
		}
	}
	// Pebble's not-before is the issue time (whole seconds in the JSON).
	if now.NotBefore.Before(start.Truncate(time.Second)) {
		t.Errorf("renewed at %s, before the CA's window opened at %s", now.NotBefore, start)
	}
	if lifetimeRule := old.NotAfter.Add(-old.NotAfter.Sub(old.NotBefore) / 3); !now.NotBefore.Before(lifetimeRule.Add(-24 * time.Hour)) {
		t.Fatalf("renewed at %s: not the CA's window", now.NotBefore)
	}
	id, err := acmeclient.CertID(chain)
	if err != nil {
		t.Fatal(err)
	}
	logText, _ := os.ReadFile(logPath)
	if !strings.Contains(string(logText), "replaces="+id) {
		t.Errorf("the CA did not confirm the order replaces %s:\n%s", id, logText)
	}
}

// storedChain reads the stored chain with `export`, as an operator would.
func (s *stack) storedChain(t *testing.T, name string) []byte {
	t.Helper()
	dir := t.TempDir()
	if _, errOut, code := s.cli(t, "export", name, "--out", dir); code != 0 {
		t.Fatalf("export %s exited %d: %s", name, code, errOut)
	}
	chain, err := os.ReadFile(filepath.Join(dir, "fullchain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func TestRevokedAndDeletedCertificatesStopBeingServed(t *testing.T) {
	s := startLifecycleStack(t, nil)
	names := []string{"revoke.example.test", "delete.example.test", "reissue.example.test"}
	if _, errOut, code := s.cli(t, append([]string{"issue"}, names...)...); code != 0 {
		t.Fatalf("issue exited %d: %s", code, errOut)
	}
	before := map[string]*x509.Certificate{}
	for _, name := range names {
		// Then it is in nginx's cache too.
		chain := s.waitServed(t, name, 45*time.Second, "issue", func(c []*x509.Certificate) bool { return !isFallback(s, c) })
		before[name] = chain[0]
	}

	out, errOut, code := s.cli(t, "revoke", "--reason", "keyCompromise", "revoke.example.test")
	if code != 0 || !strings.Contains(out, "revoked   revoke.example.test") || !strings.Contains(out, "signed_with=account") {
		t.Fatalf("revoke exited %d: %s%s", code, out, errOut)
	}
	if out, errOut, code = s.cli(t, "delete", "delete.example.test"); code != 0 || !strings.Contains(out, "deleted   delete.example.test") {
		t.Fatalf("delete exited %d: %s%s", code, out, errOut)
	}
	if out, errOut, code = s.cli(t, "revoke", "--reissue", "reissue.example.test"); code != 0 || !strings.Contains(out, "reissued  reissue.example.test") {
		t.Fatalf("revoke --reissue exited %d: %s%s", code, out, errOut)
	}
	for name, reason := range map[string]int{"revoke.example.test": 1, "reissue.example.test": -1} {
		if status, got := s.pebble.CertStatus(t, before[name].SerialNumber.Text(16)); status != "Revoked" || (reason >= 0 && got != reason) {
			t.Errorf("%s: Pebble reports %s (reason %d)", name, status, got)
		}
	}
	if status, _ := s.pebble.CertStatus(t, before["delete.example.test"].SerialNumber.Text(16)); status != "Valid" {
		t.Errorf("delete revoked the certificate: %s", status)
	}
	// nginx's per-worker cache keeps a certificate at most its freshness
	// bound; then the revoked and deleted ones are gone, the reissued one new.
	for _, name := range names[:2] {
		s.waitServed(t, name, 45*time.Second, name, func(c []*x509.Certificate) bool { return isFallback(s, c) })
	}
	s.waitServed(t, "reissue.example.test", 45*time.Second, "reissue", func(c []*x509.Certificate) bool {
		return !isFallback(s, c) && c[0].SerialNumber.Cmp(before["reissue.example.test"].SerialNumber) != 0
	})

	// Errors: nothing stored, a bad reason, a bad name.
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"revoke", "revoke.example.test"}, 1},
		{[]string{"delete", "delete.example.test"}, 1},
		{[]string{"revoke", "--reason", "boredom", "reissue.example.test"}, 2},
		{[]string{"delete", "bad_name"}, 2},
		{[]string{"delete"}, 2},
	} {
		if _, errOut, code := s.cli(t, tc.args...); code != tc.code || strings.TrimSpace(errOut) == "" {
			t.Errorf("certagent %v: exit %d (%q), want %d and a message", tc.args, code, errOut, tc.code)
		}
	}
}

// Certificates that Pebble issued, laid out as certbot keeps them (live/
// links into archive/), are imported, served by nginx, and renewed like any.
func TestImportFromACertbotDirectory(t *testing.T) {
	s := startLifecycleStack(t, nil)
	// Issue, export into a certbot tree, and delete again: nginx has never
	// served them.
	certbot := t.TempDir()
	issued := map[string]string{}
	for _, name := range []string{"cb-one.example.test", "cb-two.example.test"} {
		if _, errOut, code := s.cli(t, "issue", name); code != 0 {
			t.Fatalf("issue exited %d: %s", code, errOut)
		}
		archive := filepath.Join(certbot, "archive", name)
		if _, errOut, code := s.cli(t, "export", name, "--out", archive); code != 0 {
			t.Fatalf("export exited %d: %s", code, errOut)
		}
		if _, errOut, code := s.cli(t, "delete", name); code != 0 {
			t.Fatalf("delete exited %d: %s", code, errOut)
		}
		if info, err := os.Stat(filepath.Join(archive, "privkey.pem")); err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("exported key: %v, mode %v, want 0600", err, info.Mode().Perm())
		}
		live := filepath.Join(certbot, "live", name)
		if err := os.MkdirAll(live, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"} {
			if err := os.Symlink(filepath.Join("..", "..", "archive", name, f), filepath.Join(live, f)); err != nil {
				t.Fatal(err)
			}
		}
		chain, _ := os.ReadFile(filepath.Join(archive, "fullchain.pem"))
		block, _ := pem.Decode(chain)
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		issued[name] = leaf.SerialNumber.Text(16)
	}
	if err := os.WriteFile(filepath.Join(certbot, "live", "README"), []byte("certbot's note"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A lineage whose key does not match stops the whole import.
	bad := filepath.Join(certbot, "live", "zz-bad.example.test")
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(certbot, "archive", "cb-one.example.test", "fullchain.pem"), filepath.Join(bad, "fullchain.pem"))
	copyFile(t, filepath.Join(certbot, "archive", "cb-two.example.test", "privkey.pem"), filepath.Join(bad, "privkey.pem"))
	_, errOut, code := s.cli(t, "import", "--certbot", certbot)
	if code != 2 || !strings.Contains(errOut, "zz-bad.example.test") || !strings.Contains(errOut, "nothing was imported") {
		t.Fatalf("import with a mismatched key: exit %d: %s", code, errOut)
	}
	if _, ok := s.show(t, "cb-one.example.test"); ok {
		t.Fatal("a failed import stored something")
	}
	if err := os.RemoveAll(bad); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := s.cli(t, "import", "--certbot", certbot)
	if code != 0 || strings.Count(out, "imported ") != 2 {
		t.Fatalf("import exited %d: %s%s", code, out, errOut)
	}
	for name, serial := range issued {
		chain := s.waitServed(t, name, 45*time.Second, "import", func(c []*x509.Certificate) bool { return !isFallback(s, c) })
		if chain[0].SerialNumber.Text(16) != serial {
			t.Errorf("%s: nginx does not serve the imported certificate", name)
		}
		if err := s.verifies(t, chain, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Imported again: nothing changes.
	if out, _, code := s.cli(t, "import", "--certbot", certbot); code != 0 || strings.Count(out, "unchanged") != 2 {
		t.Errorf("second import: exit %d\n%s", code, out)
	}
	// They are in the renewal schedule and renew through the configured CA.
	if out, _, _ := s.cli(t, "status"); !strings.Contains(out, "cb-one.example.test") || !strings.Contains(out, "2 stored") {
		t.Errorf("status does not list the imported certificates:\n%s", out)
	}
	out, errOut, code = s.cli(t, "renew", "--force", "cb-one.example.test")
	if code != 0 || !strings.Contains(out, "renewed") {
		t.Fatalf("renew --force exited %d: %s%s", code, out, errOut)
	}
	if v, _ := s.show(t, "cb-one.example.test"); v.Serial == issued["cb-one.example.test"] {
		t.Error("renew --force did not store a new certificate")
	}

	// --cert/--key: an expired certificate is refused with a clear error.
	dir := t.TempDir()
	expired := testenv.NewCert(t, testenv.CertSpec{CommonName: "old.example.test", DNSNames: []string{"old.example.test"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	certPath, keyPath := expired.Write(t, dir, "old")
	if _, errOut, code := s.cli(t, "import", "--cert", certPath, "--key", keyPath); code != 2 || !strings.Contains(errOut, "expired") {
		t.Errorf("expired import: exit %d: %s", code, errOut)
	}
	if _, errOut, code := s.cli(t, "import", "--cert", certPath); code != 2 || errOut == "" {
		t.Errorf("--cert without --key: exit %d: %s", code, errOut)
	}
}

func TestListStatusAndAccountCommands(t *testing.T) {
	s := startLifecycleStack(t, map[string]time.Duration{"tenminutes": 10 * time.Minute})
	if _, errOut, code := s.cli(t, "issue", "--profile", "tenminutes", "soon.example.test"); code != 0 {
		t.Fatalf("issue exited %d: %s", code, errOut)
	}
	if _, errOut, code := s.cli(t, "issue", "later.example.test"); code != 0 {
		t.Fatalf("issue exited %d: %s", code, errOut)
	}
	out, _, code := s.cli(t, "list", "--expiring", "1h")
	if code != 0 || !strings.Contains(out, "soon.example.test") || strings.Contains(out, "later.example.test") {
		t.Errorf("list --expiring 1h exited %d:\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Index(lines[0], "STATUS") != strings.Index(lines[1], "valid") {
		t.Errorf("list table not aligned:\n%s", out)
	}
	if out, _, code = s.cli(t, "list", "--status", "failing", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("list --status failing: exit %d: %s", code, out)
	}
	for _, args := range [][]string{{"list", "--status", "sleepy"}, {"list", "--expiring", "soon"}, {"renew"}, {"renew", "--due", "x.example.test"}} {
		if _, errOut, code := s.cli(t, args...); code != 2 || errOut == "" {
			t.Errorf("certagent %v: exit %d, want 2 and a message", args, code)
		}
	}
	out, _, code = s.cli(t, "status", "--json")
	var st struct {
		Certificates int64 `json:"certificates"`
		NextRenewals []struct {
			Name string `json:"name"`
		} `json:"next_renewals"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Certificates != 2 || len(st.NextRenewals) != 2 {
		t.Errorf("status --json: exit %d, %v: %s", code, err, out)
	}
	if out, _, code = s.cli(t, "renew", "--due"); code != 0 {
		t.Errorf("renew --due exited %d: %s", code, out)
	}
	out, _, code = s.cli(t, "account", "show")
	if code != 0 || !strings.Contains(out, "registered:  true") || strings.Contains(out, "PRIVATE") {
		t.Errorf("account show exited %d:\n%s", code, out)
	}
	cmd := exec.Command(s.agent, "account", "show")
	cmd.Env = append(s.env, "CERTAGENT_EMAIL=nobody@example.test")
	if err := cmd.Run(); err == nil {
		t.Error("account show for an unregistered e-mail exited 0")
	}
	out, errOut, code := s.cli(t, "account", "register", "--email", "second@example.test")
	if code != 0 || !strings.Contains(out, "registered:  true") {
		t.Errorf("account register exited %d: %s%s", code, out, errOut)
	}
}

// issue --from-file orders one certificate per line; output that is not a
// terminal gets one plain line per certificate.
func TestIssueFromFile(t *testing.T) {
	s := startLifecycleStack(t, nil)
	file := filepath.Join(t.TempDir(), "names.txt")
	content := "# bulk\nbulk-1.example.test\n\nbulk-2.example.test, www.bulk-2.example.test\n"
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := s.cli(t, "issue", "--from-file", file)
	if code != 0 || strings.Count(out, "issued  ") != 2 || strings.Contains(errOut, "[") {
		t.Fatalf("issue --from-file exited %d:\n%s%s", code, out, errOut)
	}
	if chain := s.handshake(t, "www.bulk-2.example.test"); s.verifies(t, chain, "www.bulk-2.example.test") != nil {
		t.Error("the SAN set of a line was not issued as one certificate")
	}
	bad := filepath.Join(t.TempDir(), "bad.txt")
	if err := os.WriteFile(bad, []byte("fine.example.test\nbad_name\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := s.pebble.OrdersCreated(t)
	if _, errOut, code := s.cli(t, "issue", "--from-file", bad); code != 2 || !strings.Contains(errOut, "line 2") {
		t.Errorf("bad file: exit %d: %s", code, errOut)
	}
	if s.pebble.OrdersCreated(t) != before {
		t.Error("a bad file ordered something")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A wildcard certificate through DNS-01, answered by lego's exec provider
// (configured with lego's own variables) writing to the DNS stub Pebble's
// VA asks; nginx serves it for names below the parent.
func TestWildcardThroughDNS01(t *testing.T) {
	s := startLifecycleStack(t, nil)
	dir := t.TempDir()
	script := filepath.Join(dir, "dns-hook")
	calls := filepath.Join(dir, "calls")
	hook := `#!/bin/sh
echo "$1 $2" >> "` + calls + `"
case "$1" in
present) exec curl -sf -X POST -d "{\"host\":\"$2\",\"value\":\"$3\"}" "` + s.pebble.DNSManagement + `/set-txt" ;;
cleanup) exec curl -sf -X POST -d "{\"host\":\"$2\"}" "` + s.pebble.DNSManagement + `/clear-txt" ;;
esac
`
	if err := os.WriteFile(script, []byte(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	s.env = append(s.env, "EXEC_PATH="+script, "EXEC_PROPAGATION_TIMEOUT=20", "EXEC_POLLING_INTERVAL=1",
		"LEGO_DISABLE_CNAME_SUPPORT=true", "CERTAGENT_DNS01_RESOLVER="+s.pebble.DNSAddr)

	// Without a provider a wildcard fails clearly.
	if _, errOut, code := s.cli(t, "issue", "*.nodns.example.test"); code != 1 || !strings.Contains(errOut, "no DNS provider") {
		t.Errorf("wildcard without a provider: exit %d: %s", code, errOut)
	}
	out, errOut, code := s.cli(t, "issue", "--dns-provider", "exec", "--dns-names", "dns-only.example.test",
		"*.wild.example.test", "dns-only.example.test")
	if code != 0 {
		t.Fatalf("issue exited %d: %s%s", code, out, errOut)
	}
	// nginx learns of new records through the stream of changes, within its freshness bound.
	chain := s.waitServed(t, "shop.wild.example.test", 45*time.Second, "wildcard", func(c []*x509.Certificate) bool { return !isFallback(s, c) })
	if err := s.verifies(t, chain, "shop.wild.example.test"); err != nil {
		t.Errorf("the wildcard certificate does not verify: %v", err)
	}
	hookCalls, _ := os.ReadFile(calls)
	for _, want := range []string{"present _acme-challenge.wild.example.test.", "cleanup _acme-challenge.wild.example.test.",
		"present _acme-challenge.dns-only.example.test."} {
		if !strings.Contains(string(hookCalls), want) {
			t.Errorf("the DNS hook was not called with %q:\n%s", want, hookCalls)
		}
	}
	if _, errOut, code := s.cli(t, "issue", "--dns-provider", "no-such-dns", "x.example.test"); code != 2 || !strings.Contains(errOut, "unknown DNS provider") {
		t.Errorf("unknown provider: exit %d: %s", code, errOut)
	}
}

// With the first CA down, the order goes to the next one in the list.
func TestIssuersAreTriedInTurn(t *testing.T) {
	s := startLifecycleStack(t, nil)
	down := "https://127.0.0.1:" + fmt.Sprint(testenv.FreePort(t)) + "/dir"
	out, errOut, code := s.cli(t, "issue", "--acme-directory", down, "--fallback-directory", s.ca.DirectoryURL, "--json", "fallback.example.test")
	if code != 0 {
		t.Fatalf("issue with the first CA down exited %d: %s%s", code, out, errOut)
	}
	var issued []struct {
		CA string `json:"ca"`
	}
	if err := json.Unmarshal([]byte(out), &issued); err != nil || len(issued) != 1 || issued[0].CA != s.ca.DirectoryURL {
		t.Errorf("issued by %+v (%v), want the fallback %s", issued, err, s.ca.DirectoryURL)
	}
	if !strings.Contains(errOut, "CA failed, trying the next one") || !strings.Contains(errOut, down) {
		t.Errorf("the failed first CA is not in the log:\n%s", errOut)
	}
	// Both down: the order fails with both errors.
	_, errOut, code = s.cli(t, "issue", "--acme-directory", down, "--fallback-directory", down+"2", "second.example.test")
	if code != 1 || !strings.Contains(errOut, "CA unreachable: connection refused at "+down) ||
		!strings.Contains(errOut, "CA unreachable: connection refused at "+down+"2") {
		t.Errorf("both CAs down: exit %d:\n%s", code, errOut)
	}
}
