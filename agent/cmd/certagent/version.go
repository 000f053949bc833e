package main

import (
	"runtime/debug"
	"strings"
)

// readBuildInfo returns what the go command recorded in the binary, or nil.
func readBuildInfo() *debug.BuildInfo {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return info
}

// versionString is what --version prints: the version given at link time
// (else the module's, "dev" when built from a checkout), then the commit,
// its time and "modified" when the tree had uncommitted changes.
//
// The commit given at link time comes first: go build records one only in a
// checkout whose .git is a directory (not in a git worktree, nor in the
// Docker build, which does not copy .git) and with -buildvcs on; go run and
// go test record none.
func versionString(linkedVersion, linkedCommit string, info *debug.BuildInfo) string {
	v := linkedVersion
	if v == "" && info != nil && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	if v == "" {
		v = "dev"
	}
	if linkedCommit != "" {
		return v + " (commit " + linkedCommit + ")"
	}
	var revision, at string
	modified := false
	if info != nil {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if revision == "" {
		return v + " (commit unknown: built without VCS information)"
	}
	details := []string{"commit " + revision}
	if at != "" {
		details = append(details, at)
	}
	if modified {
		details = append(details, "modified")
	}
	return v + " (" + strings.Join(details, ", ") + ")"
}
