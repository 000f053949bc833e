package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/idna"
)

// Let's Encrypt's rules that Pebble does not enforce, as Boulder (its CA
// software) checks them, with its problem types and details. The proxy
// answers a request that breaks one itself, as Let's Encrypt would; Pebble
// never sees it. Not enforced: the public suffix list (the tests' names end in
// .test), the blocklists, and a certificate key equal to the account key.
const (
	// maxOrderNames is Let's Encrypt's limit of identifiers per order and
	// per CSR.
	maxOrderNames = 100
	// maxCNBytes is RFC 5280's ub-common-name; Let's Encrypt refuses a CSR
	// whose commonName is longer.
	maxCNBytes      = 64
	maxDomainBytes  = 253
	maxLabelBytes   = 63
	maxDomainLabels = 10
)

// ACME problem types the proxy answers with.
const (
	problemMalformed           = "urn:ietf:params:acme:error:malformed"
	problemRejectedIdentifier  = "urn:ietf:params:acme:error:rejectedIdentifier"
	problemBadCSR              = "urn:ietf:params:acme:error:badCSR"
	problemUnauthorized        = "urn:ietf:params:acme:error:unauthorized"
	problemRateLimited         = "urn:ietf:params:acme:error:rateLimited"
	problemBadNonce            = "urn:ietf:params:acme:error:badNonce"
	problemServerInternal      = "urn:ietf:params:acme:error:serverInternal"
	problemAccountDoesNotExist = "urn:ietf:params:acme:error:accountDoesNotExist"
)

// problem is an RFC 7807 problem document the proxy answers with.
type problem struct {
	Type        string       `json:"type"`
	Detail      string       `json:"detail"`
	Status      int          `json:"status"`
	SubProblems []subProblem `json:"subproblems,omitempty"`
}

type subProblem struct {
	Type       string         `json:"type"`
	Detail     string         `json:"detail"`
	Identifier acmeIdentifier `json:"identifier"`
}

type acmeIdentifier struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// checkNewOrder applies Let's Encrypt's newOrder rules to a newOrder payload:
// at most 100 identifiers, each a well-formed DNS name, and no name covered by
// a wildcard of the same order.
func checkNewOrder(payload []byte) *problem {
	var req struct {
		Identifiers []acmeIdentifier `json:"identifiers"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil // Pebble answers malformed JSON itself
	}
	var dnsNames []string
	var subs []subProblem
	for _, id := range req.Identifiers {
		if id.Type != "dns" {
			continue
		}
		name := strings.ToLower(id.Value)
		if slices.Contains(dnsNames, name) {
			continue
		}
		dnsNames = append(dnsNames, name)
		if kind, detail := checkDNSName(name); detail != "" {
			subs = append(subs, subProblem{Type: kind, Detail: detail, Identifier: acmeIdentifier{Type: "dns", Value: name}})
		}
	}
	if len(dnsNames) > maxOrderNames {
		return &problem{Type: problemMalformed, Status: http.StatusBadRequest,
			Detail: fmt.Sprintf("Order cannot contain more than %d DNS names", maxOrderNames)}
	}
	if len(subs) > 0 {
		detail := fmt.Sprintf("Cannot issue for %q: %s", subs[0].Identifier.Value, subs[0].Detail)
		if len(subs) > 1 {
			detail += fmt.Sprintf(" (and %d more problems. Refer to sub-problems for more information.)", len(subs)-1)
		}
		return &problem{Type: problemRejectedIdentifier, Status: http.StatusBadRequest, Detail: detail, SubProblems: subs}
	}
	for _, name := range dnsNames {
		if parent, ok := strings.CutPrefix(name, "*."); ok {
			for _, other := range dnsNames {
				if other != name && strings.HasSuffix(other, "."+parent) && strings.Count(other, ".") == strings.Count(name, ".") {
					return &problem{Type: problemMalformed, Status: http.StatusBadRequest, Detail: fmt.Sprintf(
						"Domain name %q is redundant with a wildcard domain in the same request. Remove one or the other from the certificate request.", other)}
				}
			}
		}
	}
	return nil
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9-]+$`)

// checkDNSName returns the problem type and detail Let's Encrypt gives for a
// malformed DNS identifier (lowercased), or an empty detail.
func checkDNSName(name string) (kind, detail string) {
	malformed := func(detail string) (string, string) { return problemMalformed, detail }
	if name == "" {
		return malformed("Domain name is empty")
	}
	if strings.Count(name, "*") > 1 {
		return malformed("Domain name has more than one wildcard")
	}
	if base, ok := strings.CutPrefix(name, "*."); ok {
		name = base
	} else if strings.Contains(name, "*") {
		return malformed("Domain name contains an invalid wildcard. A wildcard is only permitted before the first dot in a domain name")
	}
	if strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789.-") != "" {
		return malformed("Domain name contains an invalid character")
	}
	if len(name) > maxDomainBytes {
		return malformed("Domain name is longer than 253 bytes")
	}
	if net.ParseIP(name) != nil {
		return malformed("The ACME server can not issue a certificate for an IP address")
	}
	if strings.HasSuffix(name, ".") {
		return malformed("Domain name ends in a dot")
	}
	labels := strings.Split(name, ".")
	if len(labels) > maxDomainLabels {
		return malformed("Domain name has more than 10 labels (parts)")
	}
	if len(labels) < 2 {
		return malformed("Domain name needs at least one dot")
	}
	for _, label := range labels {
		switch {
		case label == "":
			return malformed("Domain name can not have two dots in a row")
		case len(label) > maxLabelBytes:
			return malformed("Domain has a label (component between dots) longer than 63 bytes")
		case !dnsLabel.MatchString(label), label[0] == '-', label[len(label)-1] == '-':
			return malformed("Domain name contains an invalid character")
		case len(label) >= 4 && label[2:4] == "--" && label[:2] != "xn":
			return problemRejectedIdentifier, "Domain name contains an invalid label in a reserved format (R-LDH: '??--')"
		case strings.HasPrefix(label, "xn--"):
			if _, err := idna.Punycode.ToUnicode(label); err != nil {
				return malformed("Domain name contains malformed punycode")
			}
		}
	}
	return "", ""
}

// checkFinalize applies Let's Encrypt's CSR rules to a finalize payload for
// an order of orderNames (lowercased): an accepted key and signature, no
// e-mail or URI, a commonName of at most 64 bytes that is no IP address, at
// most 100 identifiers, and exactly the order's identifiers.
func checkFinalize(payload []byte, orderNames []string) *problem {
	var req struct {
		CSR string `json:"csr"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil
	}
	der, err := base64.RawURLEncoding.DecodeString(req.CSR)
	if err != nil {
		return nil // Pebble refuses it as malformed
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil
	}
	badCSR := func(detail string) *problem {
		return &problem{Type: problemBadCSR, Status: http.StatusBadRequest, Detail: detail}
	}
	if detail := checkCSRKey(csr); detail != "" {
		return badCSR("invalid public key in CSR: " + detail)
	}
	switch csr.SignatureAlgorithm {
	case x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
		x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512:
	default:
		return badCSR("signature algorithm not supported")
	}
	if csr.CheckSignature() != nil {
		return badCSR("invalid signature on CSR")
	}
	if len(csr.EmailAddresses) > 0 {
		return badCSR("CSR contains one or more email address fields")
	}
	if len(csr.URIs) > 0 {
		return badCSR("CSR contains one or more URI fields")
	}
	cn := csr.Subject.CommonName
	if _, err := netip.ParseAddr(cn); err == nil {
		return badCSR("CSR contains IP address in Common Name")
	}
	if len(cn) > maxCNBytes {
		return badCSR(fmt.Sprintf("CN was longer than %d bytes", maxCNBytes))
	}
	names := csrNames(csr)
	if len(names) == 0 {
		return badCSR("at least one identifier is required")
	}
	if len(names) > maxOrderNames {
		return badCSR(fmt.Sprintf("CSR contains more than %d identifiers", maxOrderNames))
	}
	if orderNames != nil && !slices.Equal(names, orderNames) {
		return &problem{Type: problemUnauthorized, Status: http.StatusForbidden,
			Detail: "Error finalizing order :: CSR does not specify same identifiers as Order"}
	}
	return nil
}

// checkCSRKey returns why Let's Encrypt refuses the CSR's key, or "": it
// takes ECDSA P-256 and P-384 and RSA of 2048, 3072 or 4096 bits.
func checkCSRKey(csr *x509.CertificateRequest) string {
	switch key := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if key.Curve != elliptic.P256() && key.Curve != elliptic.P384() {
			return "ECDSA curve " + key.Curve.Params().Name + " not allowed"
		}
	case *rsa.PublicKey:
		if bits := key.N.BitLen(); bits != 2048 && bits != 3072 && bits != 4096 {
			return fmt.Sprintf("key size not supported: %d", bits)
		}
	default:
		return fmt.Sprintf("unsupported key type %T", key)
	}
	return ""
}

// csrNames returns the CSR's identifiers as Let's Encrypt reads them: the
// commonName and every DNS and IP SAN, lowercased, once each, sorted.
func csrNames(csr *x509.CertificateRequest) []string {
	var names []string
	add := func(name string) {
		if name = strings.ToLower(name); name != "" && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	add(csr.Subject.CommonName)
	for _, name := range csr.DNSNames {
		add(name)
	}
	for _, ip := range csr.IPAddresses {
		add(ip.String())
	}
	slices.Sort(names)
	return names
}
