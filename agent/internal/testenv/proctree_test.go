package testenv

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// KillTree reaches a grandchild that left its parent's process group and
// session (setsid), as the programs of a supervisor do.
func TestKillTreeReachesOtherGroups(t *testing.T) {
	cmd := exec.Command("sh", "-c", "setsid sleep 300 & echo $!; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(grandchild, syscall.SIGKILL) })
	// setsid forks when its caller leads a process group: wait until the
	// sleep runs (the pid printed may be setsid's, which then exits).
	var sleeper int
	for start := time.Now(); sleeper == 0; time.Sleep(10 * time.Millisecond) {
		for _, p := range Descendants(cmd.Process.Pid)[1:] {
			if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/comm"); strings.TrimSpace(string(comm)) == "sleep" {
				sleeper = p
			}
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("no sleep below %d: %v", cmd.Process.Pid, Descendants(cmd.Process.Pid))
		}
	}
	if pgid, _ := syscall.Getpgid(sleeper); pgid == cmd.Process.Pid {
		t.Fatalf("the sleep is in the shell's process group %d: the test shows nothing", pgid)
	}
	KillTree(cmd.Process.Pid)
	_ = cmd.Wait()
	for start := time.Now(); alive(sleeper); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("process %d (another session) still runs after KillTree", sleeper)
		}
	}
}

// alive reports whether p runs: it exists and is not a zombie waiting for
// its new parent to reap it.
func alive(p int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
	if err != nil {
		return false
	}
	end := strings.LastIndexByte(string(stat), ')')
	return end >= 0 && !strings.HasPrefix(strings.TrimSpace(string(stat[end+1:])), "Z")
}
