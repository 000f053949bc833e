package acmeclient

import (
	"net/http"
	"time"
)

// observedTransport reports how long each request to the CA took.
type observedTransport struct {
	base    http.RoundTripper
	observe func(method string, took time.Duration, err error)
}

func (t *observedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.base.RoundTrip(req)
	t.observe(req.Method, time.Since(start), err)
	return resp, err
}

// observeRequests returns a copy of client whose requests are reported to observe.
func observeRequests(client *http.Client, observe func(method string, took time.Duration, err error)) *http.Client {
	base := client.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c := *client
	c.Transport = &observedTransport{base: base, observe: observe}
	return &c
}
