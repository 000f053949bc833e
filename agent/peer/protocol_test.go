package peer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The signatures below were computed apart from this code, from the
// description in docs/peers.md, so that a peer written from it agrees:
//
//	body='{"names":["a.example.com"]}'
//	printf 'certagent-peer-v1\nPOST\n/peer/v1/tokens?site=b\nsite-a\n1767225600\n0123456789abcdef0123456789abcdef\n%s' \
//	  "$(printf '%s' "$body" | openssl dgst -sha256 | awk '{print $NF}')" |
//	  openssl dgst -sha256 -hmac 'fleet-secret-of-at-least-32-bytes!!'
//
// and the same for GET /peer/v1/inventory with an empty body.
func TestPeerSignatureKnownAnswers(t *testing.T) {
	const (
		secret = "fleet-secret-of-at-least-32-bytes!!"
		ts     = "1767225600"
		nonce  = "0123456789abcdef0123456789abcdef"
	)
	now := time.Unix(1767225600, 0)
	for _, tc := range []struct {
		method, target, body, want string
	}{
		{"POST", "/peer/v1/tokens?site=b", `{"names":["a.example.com"]}`,
			"8518d7758721a3db20af85f68ac8b11432d65352f9d201d89e2859b152527e73"},
		{"GET", "/peer/v1/inventory", "",
			"bccac6c32ba7425723ee4fcfbedbb14ee7c5343714dc2890637b59967d917712"},
	} {
		req := httptest.NewRequest(tc.method, "https://peer.example"+tc.target, strings.NewReader(tc.body))
		req.Header.Set(HeaderSite, "site-a")
		req.Header.Set(HeaderTimestamp, ts)
		req.Header.Set(HeaderNonce, nonce)
		req.Header.Set(HeaderSignature, "v1="+tc.want)
		signed, err := Verify(req, []byte(tc.body), []byte(secret), map[string]bool{"site-a": true}, now)
		if err != nil {
			t.Errorf("%s %s: the known signature is refused: %v", tc.method, tc.target, err)
			continue
		}
		if signed.Site != "site-a" || signed.Nonce != nonce {
			t.Errorf("%s %s: verified as %+v", tc.method, tc.target, signed)
		}
		// One bit off is refused: Verify does compare.
		req.Header.Set(HeaderSignature, "v1="+tc.want[:63]+string(tc.want[63]^1))
		if _, err := Verify(req, []byte(tc.body), []byte(secret), map[string]bool{"site-a": true}, now); err == nil {
			t.Errorf("%s %s: a signature one bit off is accepted", tc.method, tc.target)
		}
	}
}

// The signing side agrees with the known answers: the Signer's nonce is
// random, so its signature is checked against the documented string built
// here, with the standard library only.
func TestSignerFollowsTheDocumentedString(t *testing.T) {
	const secret = "fleet-secret-of-at-least-32-bytes!!"
	signer, err := NewSigner("site-a", []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"names":["a.example.com"]}`)
	req := httptest.NewRequest("POST", "https://peer.example/peer/v1/tokens?site=b", nil)
	if err := signer.Sign(req, body, time.Unix(1767225600, 0)); err != nil {
		t.Fatal(err)
	}
	bodySum := sha256.Sum256(body)
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte("certagent-peer-v1\nPOST\n/peer/v1/tokens?site=b\nsite-a\n1767225600\n" +
		req.Header.Get(HeaderNonce) + "\n" + hex.EncodeToString(bodySum[:])))
	if got, want := req.Header.Get(HeaderSignature), "v1="+hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("signature %s, want %s", got, want)
	}
	if req.Header.Get(HeaderSite) != "site-a" || req.Header.Get(HeaderTimestamp) != "1767225600" {
		t.Errorf("headers %v", req.Header)
	}
}
