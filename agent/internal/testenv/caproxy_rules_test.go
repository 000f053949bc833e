package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestCheckDNSName(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	for name, want := range map[string]string{
		"shop.example.test":                     "",
		"*.example.test":                        "",
		"xn--bcher-kva.example":                 "",
		label63 + ".example.test":               "",
		label63 + "a.example.test":              "longer than 63 bytes",
		strings.Repeat(label63+".", 4) + "test": "longer than 253 bytes",
		"a.b.c.d.e.f.g.h.i.j.k":                 "more than 10 labels",
		"localhost":                             "at least one dot",
		"a..example.test":                       "two dots in a row",
		"under_score.example.test":              "invalid character",
		"-dash.example.test":                    "invalid character",
		"example.test.":                         "ends in a dot",
		"192.0.2.1":                             "IP address",
		"a.*.example.test":                      "invalid wildcard",
		"*.*.example.test":                      "more than one wildcard",
		"ab--cd.example.test":                   "R-LDH",
		"xn--zz.example.test":                   "malformed punycode",
		"":                                      "empty",
	} {
		_, detail := checkDNSName(name)
		if (want == "") != (detail == "") || !strings.Contains(detail, want) {
			t.Errorf("checkDNSName(%q) = %q, want %q", name, detail, want)
		}
	}
}

func newOrderPayload(names ...string) []byte {
	var req struct {
		Identifiers []acmeIdentifier `json:"identifiers"`
	}
	for _, n := range names {
		req.Identifiers = append(req.Identifiers, acmeIdentifier{Type: "dns", Value: n})
	}
	out, _ := json.Marshal(req)
	return out
}

func TestCheckNewOrder(t *testing.T) {
	names := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("n%d.example.test", i)
		}
		return out
	}
	for _, tc := range []struct {
		names    []string
		wantType string
	}{
		{names(100), ""},
		{append(names(100), "N0.example.test"), ""}, // counted once, as lowercase
		{names(101), problemMalformed},
		{[]string{"ok.example.test", "bad_name.example.test"}, problemRejectedIdentifier},
		{[]string{"*.example.test", "www.example.test"}, problemMalformed},
		{[]string{"*.example.test", "a.b.example.test", "example.test"}, ""},
	} {
		p := checkNewOrder(newOrderPayload(tc.names...))
		if got := typeOf(p); got != tc.wantType {
			t.Errorf("order of %d names (%s...): %+v, want %q", len(tc.names), tc.names[0], p, tc.wantType)
		}
	}
}

func typeOf(p *problem) string {
	if p == nil {
		return ""
	}
	return p.Type
}

func finalizePayload(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(map[string]string{"csr": base64.RawURLEncoding.EncodeToString(der)})
	return out
}

func TestCheckFinalize(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("l", 65-len(".example.test")) + ".example.test"
	fits := long[1:]
	for _, tc := range []struct {
		what   string
		key    crypto.Signer
		tmpl   x509.CertificateRequest
		order  []string
		detail string
	}{
		{"no CN", ec, x509.CertificateRequest{DNSNames: []string{long}}, []string{long}, ""},
		{"64-byte CN", ec, x509.CertificateRequest{Subject: pkix.Name{CommonName: fits}, DNSNames: []string{fits}}, []string{fits}, ""},
		{"65-byte CN", ec, x509.CertificateRequest{Subject: pkix.Name{CommonName: long}, DNSNames: []string{long}}, []string{long}, "CN was longer than 64 bytes"},
		{"e-mail", ec, x509.CertificateRequest{DNSNames: []string{"a.example.test"}, EmailAddresses: []string{"x@example.test"}}, []string{"a.example.test"}, "email address"},
		{"1024-bit RSA", smallRSA, x509.CertificateRequest{DNSNames: []string{"a.example.test"}}, []string{"a.example.test"}, "invalid public key"},
		{"other names than the order's", ec, x509.CertificateRequest{DNSNames: []string{"a.example.test"}}, []string{"a.example.test", "b.example.test"}, "same identifiers as Order"},
		{"CN not among the SANs", ec, x509.CertificateRequest{Subject: pkix.Name{CommonName: "c.example.test"}, DNSNames: []string{"a.example.test"}}, []string{"a.example.test"}, "same identifiers as Order"},
	} {
		p := checkFinalize(finalizePayload(t, tc.key, &tc.tmpl), tc.order)
		got := ""
		if p != nil {
			got = p.Detail
		}
		if (tc.detail == "") != (got == "") || !strings.Contains(got, tc.detail) {
			t.Errorf("%s: %+v, want %q", tc.what, p, tc.detail)
		}
	}
}
