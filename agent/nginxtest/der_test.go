package nginxtest

import (
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// agentFields is the record as the agent writes it: the PEM fields and the
// same chain and key as DER (chain_der, key_der; docs/redis-schema.md).
func agentFields(t *testing.T, l leaf) map[string]any {
	t.Helper()
	f := leafFields(l)
	var chain []byte
	for rest := []byte(l.chainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		chain = append(chain, b.Bytes...)
	}
	key, _ := pem.Decode([]byte(l.keyPEM))
	if len(chain) == 0 || key == nil {
		t.Fatal("the test leaf has no PEM")
	}
	f["chain_der"], f["key_der"] = chain, key.Bytes
	return f
}

// TestCertificateServedFromItsDERFields: nginx parses a record's DER fields
// when it has them (a record whose PEM is broken is served from its DER), its
// PEM when the DER is missing (a record of an older agent) or does not parse,
// and a worker whose LRU let the record go serves it again from the shared
// dict, in the form it was parsed from.
func TestCertificateServedFromItsDERFields(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"lru_size": "1"}})
	notAfter := time.Now().Add(24 * time.Hour)
	leaves := map[string]leaf{}
	for _, name := range []string{"der.example.test", "brokender.example.test", "pemonly.example.test"} {
		leaves[name] = newLeaf(t, name, []string{name}, notAfter)
	}
	derOnly := agentFields(t, leaves["der.example.test"])
	derOnly["fullchain"], derOnly["key"] = "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n", "broken"
	e.storeFields("der.example.test", derOnly)
	brokenDER := agentFields(t, leaves["brokender.example.test"])
	brokenDER["chain_der"], brokenDER["key_der"] = "\x30\x03garbage", "\x30\x01"
	e.storeFields("brokender.example.test", brokenDER)
	e.store("pemonly.example.test", leaves["pemonly.example.test"])
	e.waitChangesRead()

	// Round 0 reads Redis; in round 1 the worker's LRU (of one) holds at
	// most the last name, so the others come from the shared dict, which
	// keeps each record in the form it was parsed from: the broken PEM of
	// der.example.test would not serve.
	for round := range 2 {
		for name, l := range leaves {
			if got := e.mustHandshake(name); !got.Equal(l.cert) {
				t.Errorf("round %d, %s: served %q, want its stored certificate", round, name, got.Subject.CommonName)
			}
		}
		if s := e.stats(); s.sharedCerts != 3 || s.lruCount > 1 {
			t.Errorf("round %d: %d certificates in the shared dict, %d in the LRU; want 3 and at most 1", round, s.sharedCerts, s.lruCount)
		}
	}
	if log := e.nginx.ErrorLog(); strings.Contains(log, "unusable") {
		t.Errorf("a record was found unusable:\n%s", log)
	}
}

// TestColdHandshakeOfAStoredNameIsOneRedisCommand: the first handshake of a
// stored name reads its record and nothing else (the issuing mark is read
// only for a name found without a certificate).
func TestColdHandshakeOfAStoredNameIsOneRedisCommand(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{})
	notAfter := time.Now().Add(24 * time.Hour)
	names := []string{"one.cold.example.test", "two.cold.example.test"}
	leaves := map[string]leaf{}
	for _, name := range names {
		leaves[name] = newLeaf(t, name, []string{name}, notAfter)
		e.storeFields(name, agentFields(t, leaves[name]))
	}
	e.waitChangesRead()
	// The first lookup also learns that *.cold.example.test has no record.
	e.mustHandshake(names[0])

	hmget, get := e.commands("hmget"), e.commands("get")
	if got := e.mustHandshake(names[1]); !got.Equal(leaves[names[1]].cert) {
		t.Fatalf("served %q, want the stored certificate", got.Subject.CommonName)
	}
	if n := e.commands("hmget") - hmget; n != 1 {
		t.Errorf("%d HMGETs for a cold handshake, want 1", n)
	}
	if n := e.commands("get") - get; n != 0 {
		t.Errorf("%d GETs (the issuing mark) for a name with a certificate, want 0", n)
	}
}
