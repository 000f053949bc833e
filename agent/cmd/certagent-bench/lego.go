package main

// The baseline of the bulk issuance figures: bare lego, driven through its
// acme/api with fixed short polls (25 ms, doubling up to 1 s: certagent's
// client's schedule before it learned each CA's pace), N orders at once
// against the same CA, answering HTTP-01 from memory. No Redis, no nginx, no
// agent: what the CA allows. With -paced its polls follow certagent's
// client's pace instead (acmeclient.Config.OrderPace), to tell what the pace
// saves from what the rest of the pipeline costs.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/backoff"
	"github.com/certagent/certagent/agent/internal/stages"
)

func legoBaseline(args []string) error {
	fs := flag.NewFlagSet("lego", flag.ExitOnError)
	directory := fs.String("directory", "", "ACME directory URL (required)")
	caRoots := fs.String("ca-roots", "", "PEM file of the CA's HTTPS listener root (required)")
	listen := fs.String("http", "127.0.0.1:80", "address to answer HTTP-01 on: where the CA validates")
	pattern := fs.String("pattern", "", "name pattern (fmt, one %d)")
	count := fs.Int("names", 200, "number of names")
	parallel := fs.Int("p", 20, "orders at once")
	name := fs.String("scenario", "bare lego", "label of this run")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	paced := fs.Bool("paced", false, "poll as certagent's client does (its pace), not on the fixed short schedule")
	_ = fs.Parse(args)
	if *directory == "" || *pattern == "" || *count <= 0 || *parallel <= 0 {
		return errors.New("lego: -directory, -pattern, -names > 0 and -p > 0 are required")
	}
	roots, err := loadRoots(*caRoots)
	if err != nil {
		return err
	}
	var answers sync.Map // token -> key authorization
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ka, ok := answers.Load(strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")); ok {
			_, _ = w.Write([]byte(ka.(string)))
			return
		}
		http.NotFound(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	client := &http.Client{Timeout: legoWait, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots}, MaxIdleConnsPerHost: *parallel}}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	core, err := api.New(client, "certagent-bench", *directory, "", key)
	if err != nil {
		return err
	}
	account, err := core.Accounts.New(acme.Account{TermsOfServiceAgreed: true})
	if err != nil {
		return fmt.Errorf("registering an account: %w", err)
	}
	if core, err = api.New(client, "certagent-bench", *directory, account.Location, key); err != nil {
		return err
	}

	w := waits{ready: shortPolls, valid: shortPolls}
	if *paced {
		w = waits{ready: pacedPolls(acmeclient.Config{}.OrderPace()), valid: pacedPolls(acmeclient.Config{}.OrderPace())}
	}
	r := legoOrders(core, &answers, w, *pattern, *count, *parallel)
	r.Scenario, r.Parallel, r.Paced = *name, *parallel, *paced
	if *jsonOut {
		return json.NewEncoder(os.Stdout).Encode(r)
	}
	fmt.Printf("%s: %d names, %d at once: %d certificates in %.1f s, %.2f certificates/s; order p50 %.0f ms p95 %.0f ms\n",
		r.Scenario, r.Names, r.Parallel, r.Real, r.Seconds, r.PerSecond, r.P50ms, r.P95ms)
	if r.FirstFailed != "" {
		fmt.Println("  first failure:", r.FirstFailed)
	}
	return nil
}

// legoOrders orders a certificate for each of count names, parallel at
// once, and prints the steps of the orders to stderr: the same steps as the
// agent's (certagent-bench timeline), to compare each ACME request's time in
// the same run.
func legoOrders(core *api.Core, answers *sync.Map, w waits, pattern string, count, parallel int) firstResult {
	var mu sync.Mutex
	steps := map[string]agentEvent{}
	// Once an order has failed (Pebble's lock cycle hangs every request
	// after it) the names left are not ordered: the round is void anyway.
	var failed atomic.Bool
	r := inParallel(pattern, 0, count, parallel, func(n string) nameTiming {
		if failed.Load() {
			return nameTiming{lastErr: errors.New("not ordered: an order before failed")}
		}
		start := time.Now()
		ctx, trace := stages.With(context.Background())
		err := legoOrder(ctx, core, n, answers, w)
		if err != nil {
			failed.Store(true)
		}
		mu.Lock()
		steps[n] = agentEvent{steps: parseSteps(trace.LogValue().String())}
		mu.Unlock()
		return nameTiming{real: err == nil, elapsed: time.Since(start), lastErr: err}
	})
	fmt.Fprintln(os.Stderr, "bare lego's steps:")
	printSteps(os.Stderr, names(pattern, count), steps)
	return r
}

// legoOrder orders one certificate for name: new order, each authorization
// by HTTP-01, finalize with a new P-256 key, download.
func legoOrder(ctx context.Context, core *api.Core, name string, answers *sync.Map, w waits) error {
	order, err := core.Orders.New([]string{name})
	stages.Mark(ctx, "new_order")
	if err != nil {
		return fmt.Errorf("new order for %s: %w", name, err)
	}
	for _, authzURL := range order.Authorizations {
		authz, err := core.Authorizations.Get(authzURL)
		stages.Mark(ctx, "authz_read")
		if err != nil {
			return err
		}
		var chall *acme.Challenge
		for i := range authz.Challenges {
			if authz.Challenges[i].Type == "http-01" {
				chall = &authz.Challenges[i]
			}
		}
		if chall == nil {
			return fmt.Errorf("%s: no http-01 challenge", name)
		}
		keyAuth, err := core.GetKeyAuthorization(chall.Token)
		if err != nil {
			return err
		}
		answers.Store(chall.Token, keyAuth)
		defer answers.Delete(chall.Token)
		stages.Mark(ctx, "answer")
		if _, err := core.Challenges.New(chall.URL); err != nil {
			return fmt.Errorf("starting validation of %s: %w", name, err)
		}
		stages.Mark(ctx, "validate")
	}
	// The order, not each authorization, is polled until it is ready, as
	// certagent's client does: one request follows all the authorizations.
	if err := w.ready(func() (bool, error) {
		o, err := core.Orders.Get(order.Location)
		stages.Mark(ctx, "poll_ready")
		if err == nil && o.Status == acme.StatusInvalid {
			err = fmt.Errorf("order for %s invalid: %w", name, o.Err())
		}
		return err == nil && o.Status == acme.StatusReady, err
	}); err != nil {
		return err
	}
	certKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}}, certKey)
	if err != nil {
		return err
	}
	stages.Mark(ctx, "key")
	final, err := core.Orders.UpdateForCSR(order.Finalize, csr)
	stages.Mark(ctx, "finalize")
	if err != nil {
		return fmt.Errorf("finalizing %s: %w", name, err)
	}
	if final.Status != acme.StatusValid {
		if err := w.valid(func() (bool, error) {
			final, err = core.Orders.Get(order.Location)
			stages.Mark(ctx, "poll_valid")
			if err == nil && final.Status == acme.StatusInvalid {
				err = fmt.Errorf("order for %s invalid", name)
			}
			return err == nil && final.Status == acme.StatusValid, err
		}); err != nil {
			return err
		}
	}
	_, _, err = core.Certificates.Get(final.Certificate, true)
	stages.Mark(ctx, "download")
	return err
}

// legoWait bounds each request and each order's polls: Pebble answers in
// milliseconds, and a round it hangs is void, reported within this.
const legoWait = 10 * time.Second

// waits are how an order's two waits, for its validations and for its
// certificate, are polled.
type waits struct {
	ready, valid func(check func() (bool, error)) error
}

// pacedPolls polls at p's pace for at most legoWait.
func pacedPolls(p *backoff.Pace) func(check func() (bool, error)) error {
	return func(check func() (bool, error)) error {
		ctx, cancel := context.WithTimeout(context.Background(), legoWait)
		defer cancel()
		return p.Poll(ctx, 0, check)
	}
}

// shortPolls calls check after 25 ms, then doubling up to 1 s, for at most
// legoWait: a fixed schedule, short enough that Pebble's orders, which end
// within the first poll, are found at it.
func shortPolls(check func() (bool, error)) error {
	pause, deadline := backoff.New(25*time.Millisecond, time.Second), time.Now().Add(legoWait)
	for time.Now().Before(deadline) {
		time.Sleep(pause.Next())
		if done, err := check(); err != nil || done {
			return err
		}
	}
	return fmt.Errorf("no final answer within %s", legoWait)
}
