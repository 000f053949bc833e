package acmeclient

import "context"

// withContext runs call, one request to the CA through lego's acme/api, which
// takes no context, and returns early when ctx ends. The abandoned request
// finishes in the background within the HTTP client's timeout; what it
// creates at the CA (an order, an authorization) is left to expire there.
// Without this a shutdown or a lost lease would wait for a CA that hangs.
func withContext[T any](ctx context.Context, call func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, context.Cause(ctx)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, context.Cause(ctx)
	}
}
