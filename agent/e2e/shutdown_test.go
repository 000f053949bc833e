package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// stopAgent sends SIGTERM, expects exit 0 within 30 s and returns what the
// agent logged from the signal on.
func stopAgent(t *testing.T, agent *agentProcess) string {
	t.Helper()
	before, _ := os.ReadFile(agent.logPath)
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-agent.exited:
		if err != nil {
			t.Errorf("agent exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent still running 30 s after SIGTERM")
	}
	after, _ := os.ReadFile(agent.logPath)
	return string(after[len(before):])
}

func waitForLog(t *testing.T, agent *agentProcess, what string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%q in the agent's log", what), func() bool {
		text, _ := os.ReadFile(agent.logPath)
		return strings.Contains(string(text), what)
	})
}

// A running agent stopped by SIGTERM drains and says so, without an error.
func TestCleanShutdownLogsNoError(t *testing.T) {
	s := startStack(t)
	agent := s.startAgent(t, "--allow", "*.example.test", "--consumer", "e2e")
	waitForLog(t, agent, "agent running")
	tail := stopAgent(t, agent)
	if strings.Contains(tail, "level=ERROR") || !strings.Contains(tail, "agent stopped") {
		t.Errorf("after SIGTERM the agent logged:\n%s\nwant no error, and agent stopped", tail)
	}
}

// SIGTERM while the agent is still trying to reach its CA at start-up
// stops it at once, and the cancelled attempt is not reported as an error.
func TestSIGTERMDuringStartUpLogsNoError(t *testing.T) {
	s := startStack(t)
	down := fmt.Sprintf("http://127.0.0.1:%d/dir", testenv.FreePort(t))
	agent := s.startAgent(t, "--allow", "*.example.test", "--consumer", "e2e", "--acme-directory", down)
	waitForLog(t, agent, "msg=starting")
	tail := stopAgent(t, agent)
	if strings.Contains(tail, "level=ERROR") {
		t.Errorf("after SIGTERM during start-up the agent logged:\n%s\nwant no error", tail)
	}
}
