package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CertSpec describes a certificate made for a test.
type CertSpec struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	// NotBefore defaults to an hour ago, NotAfter to a day from now.
	NotBefore, NotAfter time.Time
	// IsCA makes a CA certificate that can sign others.
	IsCA bool
	// Parent signs the certificate; nil makes it self-signed.
	Parent *Cert
}

// Cert is a test certificate with its ECDSA P-256 key.
type Cert struct {
	X509    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte // this certificate only
	KeyPEM  []byte // PKCS #8

	parent *Cert
}

// ChainPEM returns the certificate followed by its issuers up to the root.
func (c *Cert) ChainPEM() []byte {
	chain := append([]byte(nil), c.CertPEM...)
	for p := c.parent; p != nil; p = p.parent {
		chain = append(chain, p.CertPEM...)
	}
	return chain
}

// MakeCert makes a certificate; it is NewCert for code that has no testing.TB,
// such as a fake CA answering on another goroutine.
func MakeCert(spec CertSpec) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      pkix.Name{CommonName: spec.CommonName},
		NotBefore:    spec.NotBefore,
		NotAfter:     spec.NotAfter,
		DNSNames:     spec.DNSNames,
		IPAddresses:  spec.IPs,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(24 * time.Hour)
	}
	if spec.IsCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	issuer, signer := tmpl, key
	if spec.Parent != nil {
		issuer, signer = spec.Parent.X509, spec.Parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Cert{
		X509:    parsed,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		parent:  spec.Parent,
	}, nil
}

// NewCert makes a certificate or fails the test.
func NewCert(t testing.TB, spec CertSpec) *Cert {
	t.Helper()
	c, err := MakeCert(spec)
	if err != nil {
		t.Fatalf("making a test certificate: %v", err)
	}
	return c
}

// Write stores the chain and key in dir as <base>.pem and <base>.key.
func (c *Cert) Write(t testing.TB, dir, base string) (certPath, keyPath string) {
	t.Helper()
	certPath = filepath.Join(dir, base+".pem")
	keyPath = filepath.Join(dir, base+".key")
	if err := os.WriteFile(certPath, c.ChainPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, c.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}
