package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runArgsError parses args as `certagent run` flags, without running it.
func runArgsError(args ...string) error {
	cmd := runCommand()
	cmd.Action = func(*cli.Context) error { return nil }
	app := &cli.App{Name: "certagent", Commands: []*cli.Command{cmd}}
	return app.Run(append([]string{"certagent", "run"}, args...))
}

// The ranges the flags' validation actions check: an out-of-range value,
// by flag or environment variable, is a usage error naming the flag; a
// value at the bound passes.
func TestFlagRanges(t *testing.T) {
	for _, tc := range []struct {
		flag, bad, good string
	}{
		{flagRenewalShare, "1", "0.5"},
		{flagRenewalShare, "0", "0.99"},
		{flagLockTTL, "2s", "3s"},
		{flagLimitOrders, "-1", "0"},
		{flagLimitCerts, "-1", "0"},
		{flagLimitFailed, "-1", "0"},
		{flagWaitReplicas, "-1", "0"},
	} {
		err := runArgsError("--"+tc.flag, tc.bad)
		var exit cli.ExitCoder
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(err.Error(), "--"+tc.flag) {
			t.Errorf("--%s %s: %v, want a usage error naming the flag", tc.flag, tc.bad, err)
		}
		if err := runArgsError("--"+tc.flag, tc.good); err != nil {
			t.Errorf("--%s %s: %v", tc.flag, tc.good, err)
		}
	}
	t.Setenv(envVars(flagLockTTL)[0], "1s")
	if err := runArgsError(); err == nil || !strings.Contains(err.Error(), "--"+flagLockTTL) {
		t.Errorf("%s=1s: %v, want a usage error naming the flag", envVars(flagLockTTL)[0], err)
	}
}

// Every flag of run has a heading in its help (categories).
func TestRunFlagsHaveCategories(t *testing.T) {
	cmds := []*cli.Command{runCommand()}
	setCategories(cmds)
	for _, f := range cmds[0].Flags {
		c, ok := f.(cli.CategorizableFlag)
		if !ok || c.GetCategory() == "" {
			t.Errorf("--%s has no category: add it to categories", f.Names()[0])
		}
	}
}

// A secret comes from its file in the secrets directory when neither its
// flag nor its variable gives it, without the file's line end; the flag and
// the variable win over the file.
func TestSecretsFromFiles(t *testing.T) {
	secretsDir = t.TempDir()
	t.Cleanup(func() { secretsDir = "/run/secrets" })
	if err := os.WriteFile(filepath.Join(secretsDir, "certagent_webhook_secret"), []byte("from-the-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secretOf := func(args ...string) string {
		t.Helper()
		var got string
		cmd := runCommand() // reads secretsDir
		cmd.Action = func(c *cli.Context) error {
			got = c.String(flagWebhookSecret)
			return nil
		}
		app := &cli.App{Name: "certagent", Commands: []*cli.Command{cmd}}
		if err := app.Run(append([]string{"certagent", "run"}, args...)); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := secretOf(); got != "from-the-file" {
		t.Errorf("from the file: %q, want %q", got, "from-the-file")
	}
	if got := secretOf("--"+flagWebhookSecret, "from-the-flag"); got != "from-the-flag" {
		t.Errorf("with the flag: %q", got)
	}
	t.Setenv(envVars(flagWebhookSecret)[0], "from-the-environment")
	if got := secretOf(); got != "from-the-environment" {
		t.Errorf("with the variable: %q", got)
	}
}
