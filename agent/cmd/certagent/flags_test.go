package main

import (
	"errors"
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
