package store

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

func TestDERFieldsOfAChainAndItsKeyInEveryPEMForm(t *testing.T) {
	ca := testenv.NewCert(t, testenv.CertSpec{CommonName: "der CA", IsCA: true, NotAfter: time.Now().Add(time.Hour)})
	leaf := testenv.NewCert(t, testenv.CertSpec{CommonName: "der.example.com", DNSNames: []string{"der.example.com"},
		NotAfter: time.Now().Add(time.Hour), Parent: ca})
	fullChain := string(leaf.ChainPEM())
	wantChain := append(append([]byte(nil), leaf.X509.Raw...), ca.X509.Raw...)
	pkcs8, _ := pem.Decode(leaf.KeyPEM)
	sec1, err := x509.MarshalECPrivateKey(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPKCS8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	for _, tc := range []struct {
		name    string
		keyPEM  []byte
		wantKey []byte
	}{
		{"PKCS #8", leaf.KeyPEM, pkcs8.Bytes},
		{"EC PRIVATE KEY", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), pkcs8.Bytes},
		{"RSA PRIVATE KEY", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaPKCS8},
	} {
		chain, key, err := derFields(fullChain, string(tc.keyPEM))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(chain, wantChain) {
			t.Errorf("%s: chain_der is not the chain's certificates in a row", tc.name)
		}
		if !bytes.Equal(key, tc.wantKey) {
			t.Errorf("%s: key_der is not the key as PKCS #8", tc.name)
		}
	}
	for what, in := range map[string][2]string{
		"no certificate": {"not PEM", string(leaf.KeyPEM)},
		"no key":         {fullChain, ""},
		"a broken key":   {fullChain, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}))},
		"a public key":   {fullChain, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("x")}))},
	} {
		if chain, key, err := derFields(in[0], in[1]); err == nil {
			t.Errorf("%s: DER fields %d and %d bytes, want none", what, len(chain), len(key))
		}
	}
}
