package policy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestPreflightTellsAFailedCheckFromAnUnavailableOne: a resolver that answers
// SERVFAIL, or does not answer, leaves the check undecided
// (ErrPreflightUnavailable, the name waits); an answer that names other
// addresses fails it (ErrPreflight).
func TestPreflightTellsAFailedCheckFromAnUnavailableOne(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		switch r.Question[0].Name {
		case "broken.example.com.":
			m.Rcode = dns.RcodeServerFailure
		case "elsewhere.example.com.":
			if r.Question[0].Qtype == dns.TypeA {
				rr, _ := dns.NewRR("elsewhere.example.com. 60 IN A 192.0.2.7")
				m.Answer = append(m.Answer, rr)
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	defer srv.Shutdown()

	fleet := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	p, err := NewPreflight(PreflightConfig{Addresses: fleet, Resolver: pc.LocalAddr().String(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.Check(ctx, "broken.example.com"); !errors.Is(err, ErrPreflightUnavailable) || errors.Is(err, ErrPreflight) {
		t.Errorf("SERVFAIL: %v, want ErrPreflightUnavailable only", err)
	}
	if err := p.Check(ctx, "elsewhere.example.com"); !errors.Is(err, ErrPreflight) {
		t.Errorf("an address of another fleet: %v, want ErrPreflight", err)
	}

	// A resolver that does not answer at all.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	q, err := NewPreflight(PreflightConfig{Addresses: fleet, Resolver: silent.LocalAddr().String(), Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Check(ctx, "any.example.com"); !errors.Is(err, ErrPreflightUnavailable) {
		t.Errorf("silent resolver: %v, want ErrPreflightUnavailable", err)
	}
}
