package nginxtest

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// request sends method path to from the plain HTTP server with the given Host header.
func (e *env) request(method, host, path string) (int, http.Header, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, "http://"+e.nginx.HTTPAddr+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Host = host
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s (Host %s): %v", method, path, host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

const (
	challengeHost  = "ch.example.test"
	challengeToken = "Ab-_09xyzTOKENtoken-0123456789_abcdefghij"
	keyAuth        = challengeToken + ".thumbprint-Zm9vYmFy"
)

func startChallenge(t *testing.T) *env {
	e := start(t, "")
	err := e.redis.Client.Set(context.Background(),
		e.key("token", "name", challengeHost, "token", challengeToken), keyAuth, 600*time.Second).Err()
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestChallengeHit(t *testing.T) {
	e := startChallenge(t)
	path := "/.well-known/acme-challenge/" + challengeToken
	for _, host := range []string{challengeHost, "CH.Example.Test", challengeHost + ":80", challengeHost + ".", challengeHost + ":8080"} {
		status, header, body := e.request("GET", host, path)
		if status != 200 || body != keyAuth {
			t.Errorf("GET with Host %q: %d %q, want 200 %q", host, status, body, keyAuth)
		}
		if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("Content-Type %q, want text/plain", ct)
		}
	}
	status, header, body := e.request("HEAD", challengeHost, path)
	if cl := header.Get("Content-Length"); status != 200 || body != "" || cl != strconv.Itoa(len(keyAuth)) {
		t.Errorf("HEAD: %d, Content-Length %q, body %q; want 200, %d, no body", status, cl, body, len(keyAuth))
	}
	// Another host's token is not served.
	if status, _, _ := e.request("GET", "other.example.test", path); status != 404 {
		t.Errorf("GET for another host: %d, want 404", status)
	}
}

func TestChallengeMisses(t *testing.T) {
	e := startChallenge(t)
	ctx := context.Background()
	e.redis.Client.ConfigResetStat(ctx)
	cases := []struct {
		method, host, path string
		want               int
	}{
		{"GET", challengeHost, "/.well-known/acme-challenge/unknownToken", 404},
		{"GET", challengeHost, "/.well-known/acme-challenge/bad!token", 400},
		{"GET", challengeHost, "/.well-known/acme-challenge/tok%20en", 400},
		{"GET", challengeHost, "/.well-known/acme-challenge/a.b", 400},
		{"GET", challengeHost, "/.well-known/acme-challenge/" + strings.Repeat("a", 129), 400},
		{"GET", challengeHost, "/.well-known/acme-challenge/", 400},
		{"GET", challengeHost, "/.well-known/acme-challenge/a/b", 400},
		{"GET", "1.2.3.4", "/.well-known/acme-challenge/" + challengeToken, 400},
		{"GET", "under_score.example.test", "/.well-known/acme-challenge/" + challengeToken, 400},
		{"GET", "localhost", "/.well-known/acme-challenge/" + challengeToken, 400},
		{"POST", challengeHost, "/.well-known/acme-challenge/" + challengeToken, 405},
		{"PUT", challengeHost, "/.well-known/acme-challenge/" + challengeToken, 405},
		{"DELETE", challengeHost, "/.well-known/acme-challenge/" + challengeToken, 405},
	}
	for _, c := range cases {
		status, header, body := e.request(c.method, c.host, c.path)
		if status != c.want {
			t.Errorf("%s %s (Host %s): %d %q, want %d", c.method, c.path, c.host, status, body, c.want)
		}
		if c.want == 405 && header.Get("Allow") != "GET, HEAD" {
			t.Errorf("405 without Allow: GET, HEAD (got %q)", header.Get("Allow"))
		}
	}
	// Only the unknown token reached Redis, and nothing was written.
	if n, err := e.redis.CommandCalls("get"); err != nil || n != 1 {
		t.Errorf("GET ran %d times (%v), want 1: rejected requests must not touch Redis", n, err)
	}
	if n, err := e.redis.Client.DBSize(ctx).Result(); err != nil || n != 1 {
		t.Errorf("DBSIZE = %d (%v), want 1: the challenge endpoint wrote something", n, err)
	}
}

func TestChallengeRedisDown(t *testing.T) {
	e := startChallenge(t)
	path := "/.well-known/acme-challenge/" + challengeToken
	e.redis.Stop()
	if status, _, body := e.request("GET", challengeHost, path); status != 503 {
		t.Errorf("GET with Redis down: %d %q, want 503", status, body)
	}
	e.redis.Start()
	err := e.redis.Client.Set(context.Background(),
		e.key("token", "name", challengeHost, "token", challengeToken), keyAuth, 600*time.Second).Err()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the challenge to be answered after Redis came back", func() bool {
		status, _, body := e.request("GET", challengeHost, path)
		return status == 200 && body == keyAuth
	})
}
