package testenv

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// pebbleLaunch is Pebble's command line and environment.
type pebbleLaunch struct {
	bin  string
	env  []string
	args []string
}

// start starts Pebble and waits until its directory and management API
// answer.
func (p *Pebble) start() error {
	var err error
	p.pebble, err = startProcess(p.launch.bin, p.LogFile, p.launch.env, p.launch.args...)
	if err != nil {
		return err
	}
	p.starts++
	deadline := time.Now().Add(pebbleStartLimit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = p.Alive(ctx)
		if err == nil {
			err = p.get(ctx, p.ManagementURL+"/roots/0", nil)
		}
		cancel()
		if err == nil {
			return nil
		}
		if p.pebble.exited() {
			return fmt.Errorf("pebble exited: %s", lastLines(p.LogFile, 10))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the directory %s did not answer within %s: %v", p.DirectoryURL, pebbleStartLimit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills Pebble (the DNS stub keeps running): its ports refuse
// connections until Restart.
func (p *Pebble) Stop(t testing.TB) {
	t.Helper()
	p.pebble.stop()
}

// Restart kills Pebble, unless Stop did, and starts it again on the same addresses, the way a
// CA comes back after `docker compose down` and `up`: the same directory URL
// and the same HTTPS certificate (CARootsFile stays valid, as Pebble's own
// listener certificate does), but new issuing roots and intermediates, and
// no accounts, orders or authorizations. RootCerts, Roots and Intermediates
// answer for the new roots from then on; LogFile names a new log, so
// OrdersCreated and AccountsCreated count from the restart.
func (p *Pebble) Restart(t testing.TB) {
	t.Helper()
	p.pebble.stop()
	p.rootsOnce, p.roots, p.rootsErr = sync.Once{}, nil, nil
	p.LogFile = filepath.Join(filepath.Dir(p.LogFile), "pebble-"+strconv.Itoa(p.starts+1)+".log")
	var err error
	// The ports were Pebble's a moment ago; another test may take one
	// while it restarts, so a start that dies early is retried.
	for attempt := 0; attempt < 3; attempt++ {
		if err = p.start(); err == nil {
			return
		}
		p.pebble.stop()
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("restarting pebble: %v", err)
}

var accountsLine = regexp.MustCompile(`There are now (\d+) accounts in memory`)

// AccountsCreated returns how many accounts Pebble has created since it
// (re)started, read from its log.
func (p *Pebble) AccountsCreated(t testing.TB) int {
	t.Helper()
	return lastCount(t, p.LogFile, accountsLine)
}

// lastCount returns the number in the last line of the log at path that
// matches re (its first group), or 0.
func lastCount(t testing.TB, path string, re *regexp.Regexp) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("reading pebble's log: %v", err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		if m := re.FindSubmatch(sc.Bytes()); m != nil {
			n, _ = strconv.Atoi(string(m[1]))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading pebble's log: %v", err)
	}
	return n
}
