package nginxtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"hash/crc32"
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// agentFields is the record as the agent writes it: the PEM fields, the
// same chain and key as DER (chain_der, key_der) and the CRC-32 of the PEM
// they were made from (der_crc32; docs/redis-schema.md).
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
	f["der_crc32"] = pemCRC(l.chainPEM, l.keyPEM)
	return f
}

// pemCRC is der_crc32 for the PEM fields fullchain and key.
func pemCRC(fullchain, key string) string {
	return strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(fullchain+key))), 10)
}

// TestCertificateServedFromItsDERFields: nginx parses a record's DER fields
// when they were made from its PEM (der_crc32 says so: a record whose PEM is
// broken is then served from its DER), its PEM when the DER is missing (a
// record of an older agent), does not parse, or was made from another PEM
// (the PEM replaced by hand: the new certificate is served, not the old
// one), and a worker whose LRU let the record go serves it again from the
// shared dict, in the form it was parsed from.
func TestCertificateServedFromItsDERFields(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{LuaConfig: map[string]string{"lru_size": "1"}})
	notAfter := time.Now().Add(24 * time.Hour)
	leaves := map[string]leaf{}
	for _, name := range []string{"der.example.test", "brokender.example.test", "pemonly.example.test", "edited.example.test"} {
		leaves[name] = newLeaf(t, name, []string{name}, notAfter)
	}
	derOnly := agentFields(t, leaves["der.example.test"])
	derOnly["fullchain"], derOnly["key"] = "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n", "broken"
	derOnly["der_crc32"] = pemCRC(derOnly["fullchain"].(string), derOnly["key"].(string))
	e.storeFields("der.example.test", derOnly)
	edited := agentFields(t, newLeaf(t, "edited.example.test", []string{"edited.example.test"}, notAfter))
	edited["fullchain"], edited["key"] = leaves["edited.example.test"].chainPEM, leaves["edited.example.test"].keyPEM
	e.storeFields("edited.example.test", edited)
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
		if s := e.stats(); s.sharedCerts != len(leaves) || s.lruCount > 1 {
			t.Errorf("round %d: %d certificates in the shared dict, %d in the LRU; want %d and at most 1", round, s.sharedCerts, s.lruCount, len(leaves))
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

// TestChainsSharingAnIntermediateServeFromDER: records of one CA share its
// parsed intermediate in a worker; each is served its own leaf with it, and
// one dropped from the cache (its chain freed) leaves the others whole.
func TestChainsSharingAnIntermediateServeFromDER(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{})
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "shared intermediate", IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})
	names := []string{"a.shared.example.test", "b.shared.example.test", "c.shared.example.test"}
	leaves := map[string]leaf{}
	for _, name := range names {
		c := testenv.NewCert(t, testenv.CertSpec{CommonName: name, DNSNames: []string{name},
			NotAfter: time.Now().Add(24 * time.Hour), Parent: ca})
		leaves[name] = leaf{cert: c.X509, chainPEM: string(c.ChainPEM()), keyPEM: string(c.KeyPEM), notAfter: c.X509.NotAfter}
		e.storeFields(name, agentFields(t, leaves[name]))
	}
	e.waitChangesRead()
	check := func(when string, names ...string) {
		t.Helper()
		for _, name := range names {
			chain := e.mustHandshakeChain(name)
			if len(chain) != 2 || !chain[0].Equal(leaves[name].cert) || !chain[1].Equal(ca.X509) {
				t.Errorf("%s, %s: served a chain of %d, want its leaf and the shared intermediate", when, name, len(chain))
			}
		}
	}
	check("cold", names...)
	e.remove(names[0])
	e.waitChangesRead()
	check("after one of them was dropped", names[1:]...)
	e.storeFields(names[0], agentFields(t, leaves[names[0]]))
	e.waitChangesRead()
	check("stored again", names...)
}

// mustHandshakeChain returns the chain served for serverName.
func (e *env) mustHandshakeChain(serverName string) []*x509.Certificate {
	e.t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.nginx.HTTPSAddr,
		&tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	if err != nil {
		e.t.Fatalf("handshake with SNI %q: %v", serverName, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

// selfSignedLeaf is a leaf for name signed by its own key, a key of the
// given type, valid until notAfter.
func selfSignedLeaf(t *testing.T, name string, key crypto.Signer, notAfter time.Time) leaf {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return leaf{cert: cert, notAfter: notAfter,
		chainPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM:   string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))}
}

// ecPrivateKey is the ECPrivateKey of RFC 5915, the inner key of a PKCS #8
// EC key.
type ecPrivateKey struct {
	Version       int
	PrivateKey    []byte
	NamedCurveOID asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
	PublicKey     asn1.BitString        `asn1:"optional,explicit,tag:1"`
}

// editECKey returns the PKCS #8 EC key der with edit applied to its inner
// ECPrivateKey.
func editECKey(t *testing.T, der []byte, edit func(*ecPrivateKey)) []byte {
	t.Helper()
	var p8 struct {
		Version    int
		Algo       pkix.AlgorithmIdentifier
		PrivateKey []byte
	}
	var k ecPrivateKey
	if _, err := asn1.Unmarshal(der, &p8); err != nil {
		t.Fatal(err)
	}
	if _, err := asn1.Unmarshal(p8.PrivateKey, &k); err != nil {
		t.Fatal(err)
	}
	edit(&k)
	inner, err := asn1.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	p8.PrivateKey = inner
	out, err := asn1.Marshal(p8)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKeysOfEachTypeServeFromDER: a record's PKCS #8 key_der is read for
// each key type the agent issues (EC P-256 and P-384, RSA), and an EC key
// without its public key (optional in RFC 5915, which nginx then reads the
// legacy way), with its PEM fields broken so that only the DER can serve it;
// a key_der of another certificate's key, or one cut short, is not served
// with the certificate; an EC key_der whose public key is not on its curve
// (OpenSSL refuses to import it) leaves the record to its PEM.
func TestKeysOfEachTypeServeFromDER(t *testing.T) {
	e := startWith(t, testenv.NginxOptions{})
	notAfter := time.Now().Add(24 * time.Hour)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	leaves := map[string]leaf{
		"p256.keys.example.test":  selfSignedLeaf(t, "p256.keys.example.test", p256, notAfter),
		"p384.keys.example.test":  selfSignedLeaf(t, "p384.keys.example.test", p384, notAfter),
		"rsa.keys.example.test":   selfSignedLeaf(t, "rsa.keys.example.test", rsa2048, notAfter),
		"nopub.keys.example.test": selfSignedLeaf(t, "nopub.keys.example.test", p256, notAfter),
	}
	derOnly := func(l leaf) map[string]any {
		f := agentFields(t, l)
		f["fullchain"], f["key"] = "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n", "broken"
		f["der_crc32"] = pemCRC(f["fullchain"].(string), f["key"].(string))
		return f
	}
	for name, l := range leaves {
		f := derOnly(l)
		if name == "nopub.keys.example.test" {
			f["key_der"] = editECKey(t, f["key_der"].([]byte), func(k *ecPrivateKey) { k.PublicKey = asn1.BitString{} })
		}
		e.storeFields(name, f)
	}
	offCurve := selfSignedLeaf(t, "offcurve.keys.example.test", p256, notAfter)
	offCurveFields := agentFields(t, offCurve)
	offCurveFields["key_der"] = editECKey(t, offCurveFields["key_der"].([]byte), func(k *ecPrivateKey) {
		k.PublicKey.Bytes[len(k.PublicKey.Bytes)-1] ^= 1
	})
	e.storeFields("offcurve.keys.example.test", offCurveFields)
	leaves["offcurve.keys.example.test"] = offCurve
	otherKey := derOnly(selfSignedLeaf(t, "otherkey.keys.example.test", p256, notAfter))
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherKey["key_der"], _ = x509.MarshalPKCS8PrivateKey(other)
	e.storeFields("otherkey.keys.example.test", otherKey)
	cut := derOnly(selfSignedLeaf(t, "cut.keys.example.test", p384, notAfter))
	cut["key_der"] = cut["key_der"].([]byte)[:40]
	e.storeFields("cut.keys.example.test", cut)
	e.waitChangesRead()

	for name, l := range leaves {
		if got := e.mustHandshake(name); !got.Equal(l.cert) {
			t.Errorf("%s: served %q, want its stored certificate", name, got.Subject.CommonName)
		}
	}
	for _, name := range []string{"otherkey.keys.example.test", "cut.keys.example.test"} {
		if got := e.mustHandshake(name); !e.isFallback(got) {
			t.Errorf("%s: served %q, want the fallback", name, got.Subject.CommonName)
		}
	}
}
