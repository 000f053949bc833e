package testenv

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// KillTree sends SIGKILL to the process pid and to every process descended
// from it, whichever process group or session they are in. A supervisor
// (supervisord) puts each program in a group of its own, so killing the
// supervisor's group leaves them running; and a child whose parent dies is
// handed to init, after which it cannot be found from pid: the tree is
// listed first, then killed, the root first so that nothing restarts.
func KillTree(pid int) {
	for _, p := range Descendants(pid) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

// Descendants returns pid and the processes descended from it, parents
// before their children, from /proc.
func Descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentOf(p); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// parentOf reads the parent of p from /proc/<p>/stat: the field after the
// state, which follows the command name in parentheses (which may itself
// hold spaces and parentheses, hence the last ')').
func parentOf(p int) (int, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
	if err != nil {
		return 0, false
	}
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, false
	}
	fields := bytes.Fields(stat[end+1:])
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(string(fields[1]))
	return ppid, err == nil
}
