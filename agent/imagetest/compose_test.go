//go:build imagetest

package imagetest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// composeCommand is `docker compose` where that plugin is installed, else the
// older docker-compose; docker/compose.yml serves both.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if path, err := exec.LookPath("docker-compose"); err == nil {
		return []string{path}
	}
	t.Fatal("neither `docker compose` nor docker-compose is installed")
	return nil
}

type composeStack struct {
	t       *testing.T
	command []string
	env     []string
	https   string
}

// compose runs the compose command on docker/compose.yml with the pebble
// profile, as the README does.
func (c *composeStack) compose(args ...string) ([]byte, error) {
	args = append(append(append([]string{}, c.command[1:]...),
		"-f", "docker/compose.yml", "--env-file", "docker/pebble.env", "--profile", "pebble"), args...)
	cmd := exec.Command(c.command[0], args...)
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = c.env
	return cmd.CombinedOutput()
}

func (c *composeStack) run(args ...string) string {
	c.t.Helper()
	out, err := c.compose(args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", strings.Join(c.command, " "), strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// waitHealthy waits for the certagent service's health check.
func (c *composeStack) waitHealthy() {
	c.t.Helper()
	id := c.run("ps", "-q", "certagent")
	deadline := time.Now().Add(90 * time.Second)
	for {
		status := docker(c.t, "inspect", "-f", "{{.State.Health.Status}}", id)
		if status == "healthy" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the compose certagent service is %s after 90 s:\n%s", status, c.run("logs", "--tail", "60"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// issued waits until name is served a certificate from Pebble's chain.
func (c *composeStack) issued(name string) *x509.Certificate {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.https,
			&tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			leaf := conn.ConnectionState().PeerCertificates[0]
			conn.Close()
			if strings.HasPrefix(leaf.Issuer.CommonName, "Pebble") && leaf.VerifyHostname(name) == nil {
				return leaf
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s not served a certificate from Pebble within 30 s:\n%s", name, c.run("logs", "--tail", "60"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestComposeDownUp runs docker/compose.yml with its pebble profile as the
// README says, then `down` and `up` again: the new Pebble has forgotten the
// account the agent keeps in Redis (on the volume), and a new name is still
// issued; the earlier one is served from Redis.
func TestComposeDownUp(t *testing.T) {
	c := &composeStack{t: t, command: composeCommand(t)}
	https := testenv.FreePort(t)
	c.https = "127.0.0.1:" + strconv.Itoa(https)
	c.env = append(os.Environ(),
		"COMPOSE_PROJECT_NAME=certagent-test-"+randomSuffix(),
		"CERTAGENT_IMAGE="+image,
		"CERTAGENT_PEBBLE_IMAGE="+pebbleImage,
		"CERTAGENT_HTTP_PORT="+strconv.Itoa(testenv.FreePort(t)),
		"CERTAGENT_HTTPS_PORT="+strconv.Itoa(https),
		"CERTAGENT_PEBBLE_PORT="+strconv.Itoa(testenv.FreePort(t)),
	)
	t.Cleanup(func() { _, _ = c.compose("down", "-v") })

	c.run("up", "-d")
	c.waitHealthy()
	first := c.issued("before.demo.test")

	c.run("down")
	c.run("up", "-d")
	c.waitHealthy()
	if again := c.issued("before.demo.test"); !again.Equal(first) {
		t.Error("after down and up before.demo.test is not served its certificate from the volume")
	}
	c.issued("after.demo.test")
}
