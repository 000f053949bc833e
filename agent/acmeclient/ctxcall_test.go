package acmeclient

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestNewReturnsWhenItsContextEndsWhileTheCAHangs: a CA that accepts
// connections and never answers holds lego's calls for the HTTP client's
// timeout (30 s); New must return as soon as its context ends.
func TestNewReturnsWhenItsContextEndsWhileTheCAHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, conn) // never answered
		}
	}()
	stopped := errors.New("the agent is shutting down")
	ctx, cancel := context.WithCancelCause(context.Background())
	time.AfterFunc(200*time.Millisecond, func() { cancel(stopped) })

	done := make(chan error, 1)
	go func() {
		_, err := New(ctx, Config{DirectoryURL: "https://" + ln.Addr().String() + "/dir"}, &memAccounts{}, NewHTTP01Provider(&memTokens{}, 0))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, stopped) {
			t.Errorf("New against a hanging CA: %v, want the context's cause", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("New still waiting for the hanging CA 20 s after its context ended")
	}
}

func TestWithContextReturnsTheCallsResult(t *testing.T) {
	v, err := withContext(context.Background(), func() (int, error) { return 7, nil })
	if v != 7 || err != nil {
		t.Errorf("withContext = %d, %v", v, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	if _, err := withContext(ctx, func() (int, error) { called = true; return 0, nil }); !errors.Is(err, context.Canceled) || called {
		t.Errorf("an ended context: err %v, called %v; want context.Canceled without the call", err, called)
	}
}
