package main

import (
	"runtime/debug"
	"testing"
)

func TestVersionString(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "-trimpath", Value: "true"},
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-12-07T01:00:00Z"},
		{Key: "vcs.modified", Value: "false"},
	}
	dirty := append(append([]debug.BuildSetting{}, vcs[:4]...), debug.BuildSetting{Key: "vcs.modified", Value: "true"})
	for _, tc := range []struct {
		what, linked, commit string
		info                 *debug.BuildInfo
		want                 string
	}{
		{"no build information", "", "", nil, "dev (commit unknown: built without VCS information)"},
		{"a checkout", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs},
			"dev (commit 0123456789abcdef0123456789abcdef01234567, 2026-12-07T01:00:00Z)"},
		{"uncommitted changes", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: dirty},
			"dev (commit 0123456789abcdef0123456789abcdef01234567, 2026-12-07T01:00:00Z, modified)"},
		{"-ldflags -X main.version", "v1.4.0", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs},
			"v1.4.0 (commit 0123456789abcdef0123456789abcdef01234567, 2026-12-07T01:00:00Z)"},
		{"go install module@version", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.3.2"}},
			"v1.3.2 (commit unknown: built without VCS information)"},
		{"go run", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			"dev (commit unknown: built without VCS information)"},
		{"-ldflags -X main.commit, in a worktree", "", "89abcdef0123456789abcdef0123456789abcdef-modified",
			&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			"dev (commit 89abcdef0123456789abcdef0123456789abcdef-modified)"},
		{"-ldflags -X main.commit wins", "", "89abcdef0123456789abcdef0123456789abcdef",
			&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs},
			"dev (commit 89abcdef0123456789abcdef0123456789abcdef)"},
	} {
		if got := versionString(tc.linked, tc.commit, tc.info); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.what, got, tc.want)
		}
	}
}
