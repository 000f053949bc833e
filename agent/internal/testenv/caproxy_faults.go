package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// FaultKind is a failure the proxy plays instead of the CA's answer.
type FaultKind string

// The faults a test can ask for.
const (
	// FaultRateLimited answers 429 rateLimited, with Fault.RetryAfter.
	FaultRateLimited FaultKind = "rateLimited"
	// FaultBadNonce answers 400 badNonce with a fresh nonce, as a CA does
	// for a stale or unknown nonce; a client retries it by itself.
	FaultBadNonce FaultKind = "badNonce"
	// FaultServerInternal answers 500 serverInternal.
	FaultServerInternal FaultKind = "serverInternal"
	// FaultHang accepts the request and answers nothing until ReleaseHung
	// or ClearFaults (it then goes on to the CA) or the client gives up.
	FaultHang FaultKind = "hang"
)

// AllRequests is a Fault.Path that matches every request, the directory and
// nonces too: Fault{Kind: FaultHang, Path: AllRequests} is a CA that accepts
// connections and never answers, FaultServerInternal one that answers only
// 500, until ClearFaults.
const AllRequests = "/"

// Paths of Pebble's ACME endpoints, for Fault.Path.
const (
	PathNewAccount = "/sign-me-up"
	PathNewOrder   = "/order-plz"
	PathFinalize   = "/finalize-order/"
	PathAuthz      = "/authZ/"
	PathChallenge  = "/chalZ/"
	PathCert       = "/certZ/"
	pathNewNonce   = "/nonce-plz"
	pathOrder      = "/my-order/"
)

// Fault says which requests get which failure.
type Fault struct {
	Kind FaultKind
	// Times is how many requests get it; 0 or less: every matching request
	// until ClearFaults.
	Times int
	// Path limits the fault to requests, of any method, whose path starts
	// with it (one of the Path constants). Default: every signed (POST)
	// request.
	Path string
	// Names limits the fault to requests about an order for one of these
	// names: its newOrder and every later request for the order, its
	// authorizations, challenges, finalization and certificate.
	Names []string
	// RetryAfter of a rateLimited answer, in whole seconds. 0 sends no
	// Retry-After header.
	RetryAfter time.Duration
	// Detail of the problem. Default: what Let's Encrypt says for the kind.
	Detail string
}

// FailNext makes the next n signed requests, whatever they are, fail with
// kind (with a Retry-After of an hour for FaultRateLimited).
func (cp *CAProxy) FailNext(kind FaultKind, n int) {
	f := Fault{Kind: kind, Times: max(n, 1)}
	if kind == FaultRateLimited {
		f.RetryAfter = time.Hour
	}
	cp.Inject(f)
}

// Inject adds a fault; faults are matched in the order they were added.
func (cp *CAProxy) Inject(f Fault) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.faults = append(cp.faults, &f)
}

// ClearFaults removes every fault and lets every hung request go on.
func (cp *CAProxy) ClearFaults() {
	cp.mu.Lock()
	cp.faults = nil
	cp.mu.Unlock()
	cp.ReleaseHung()
}

// ReleaseHung lets every request held by FaultHang go on to the CA.
func (cp *CAProxy) ReleaseHung() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	close(cp.release)
	cp.release = make(chan struct{})
}

// Hung returns how many requests FaultHang holds now.
func (cp *CAProxy) Hung() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.hung
}

// Faulted returns how many answers of kind the proxy gave (hangs: requests
// held) since it started.
func (cp *CAProxy) Faulted(kind FaultKind) int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.faulted[kind]
}

// ResetAccounts plays a CA that lost its accounts (a new database, a
// restarted Pebble): from now on a request signed by an account that is not
// registered again is answered accountDoesNotExist, and so is a newAccount
// with onlyReturnExisting for its key. A plain newAccount registers the key
// again: Pebble still has it and keeps its URL, which the proxy answers as a
// new account (201 Created) and lets through from then on.
func (cp *CAProxy) ResetAccounts() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.accountsReset = true
	cp.reregistered = map[string]bool{}
}

// takeFault returns the first fault matching the request and counts it, or
// nil.
func (cp *CAProxy) takeFault(r *http.Request, post *acmePost) *Fault {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for i, f := range cp.faults {
		if (f.Path == "" && post == nil) || !strings.HasPrefix(r.URL.Path, f.Path) {
			continue
		}
		if len(f.Names) > 0 && !cp.concernsLocked(r.URL.Path, post, f.Names) {
			continue
		}
		if f.Times > 0 {
			if f.Times--; f.Times == 0 {
				cp.faults = slices.Delete(cp.faults, i, i+1)
			}
		}
		cp.faulted[f.Kind]++
		return f
	}
	return nil
}

// concernsLocked tells whether a request is about an order for one of names.
func (cp *CAProxy) concernsLocked(path string, post *acmePost, names []string) bool {
	var orderNames []string
	if path == PathNewOrder && post != nil {
		orderNames = identifierNames(post.payload)
	} else if o := cp.orderOfLocked(path); o != nil {
		orderNames = o.Names
	}
	for _, n := range names {
		if slices.Contains(orderNames, strings.ToLower(n)) {
			return true
		}
	}
	return false
}

// orderOfLocked returns the order a path belongs to, or nil.
func (cp *CAProxy) orderOfLocked(path string) *ProxyOrder {
	if o, ok := cp.orders[path]; ok {
		return o
	}
	if owner, ok := cp.owner[path]; ok {
		return cp.orders[owner]
	}
	return nil
}

// playFault answers r with f, or holds it for FaultHang. It reports whether
// the request is answered; a released hang goes on to the CA.
func (cp *CAProxy) playFault(w http.ResponseWriter, r *http.Request, f *Fault) bool {
	switch f.Kind {
	case FaultHang:
		cp.hold(r.Context())
		return r.Context().Err() != nil
	case FaultRateLimited:
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(f.RetryAfter/time.Second)))
		}
		cp.writeProblem(w, &problem{Type: problemRateLimited, Status: http.StatusTooManyRequests,
			Detail: orDefault(f.Detail, "too many new orders (300) from this account in the last 3h0m0s")})
	case FaultBadNonce:
		cp.writeProblem(w, &problem{Type: problemBadNonce, Status: http.StatusBadRequest,
			Detail: orDefault(f.Detail, "JWS has an invalid anti-replay nonce")})
	case FaultServerInternal:
		cp.writeProblem(w, &problem{Type: problemServerInternal, Status: http.StatusInternalServerError,
			Detail: orDefault(f.Detail, "Error creating new order")})
	default:
		panic(fmt.Sprintf("testenv: unknown fault kind %q", f.Kind))
	}
	return true
}

// hold blocks until the hung requests are released, the client gives up, or
// the proxy stops.
func (cp *CAProxy) hold(ctx context.Context) {
	cp.mu.Lock()
	cp.hung++
	release := cp.release
	cp.mu.Unlock()
	defer func() {
		cp.mu.Lock()
		cp.hung--
		cp.mu.Unlock()
	}()
	select {
	case <-release:
	case <-ctx.Done():
	case <-cp.closed:
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// lostAccountLocked returns the accountDoesNotExist problem for a request
// signed by an account the CA lost (ResetAccounts), or nil.
func (cp *CAProxy) lostAccountLocked(post *acmePost) *problem {
	if !cp.accountsReset || post.kid == "" || cp.reregistered[urlPath(post.kid)] {
		return nil
	}
	return &problem{Type: problemAccountDoesNotExist, Status: http.StatusBadRequest,
		Detail: fmt.Sprintf("Account %q not found", post.kid)}
}

// observeNewAccount turns Pebble's answer to a newAccount for a key it knows
// into what a CA that lost the account answers: accountDoesNotExist for
// onlyReturnExisting, a new registration otherwise.
func (cp *CAProxy) observeNewAccount(resp *http.Response, post *acmePost) {
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return
	}
	account := urlPath(resp.Header.Get("Location"))
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if !cp.accountsReset || cp.reregistered[account] {
		return
	}
	var req struct {
		OnlyReturnExisting bool `json:"onlyReturnExisting"`
	}
	_ = json.Unmarshal(post.payload, &req)
	if req.OnlyReturnExisting {
		replaceResponse(resp, &problem{Type: problemAccountDoesNotExist, Status: http.StatusBadRequest,
			Detail: "No account exists with the provided key"})
		return
	}
	cp.reregistered[account] = true
	resp.StatusCode, resp.Status = http.StatusCreated, "201 Created"
}
