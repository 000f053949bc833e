package telemetry

import "testing"

// TestWebhookSignatureKnownAnswer checks Sign against a value computed
// apart from this code, so that a receiver written from the documentation
// agrees with it:
//
//	printf '%s' '1767225600.{"type":"issued","name":"a.example.com"}' | openssl dgst -sha256 -hmac s3cret
func TestWebhookSignatureKnownAnswer(t *testing.T) {
	const want = "sha256=0e84179478d8f2710567894074ed7a38a70bc87181b397b43f05c968967623ee"
	if got := Sign("s3cret", 1767225600, []byte(`{"type":"issued","name":"a.example.com"}`)); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}
