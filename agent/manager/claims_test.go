package manager

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Of many workers claiming one key at once, exactly one gets it; after the
// release it can be claimed again.
func TestClaimSetHandsAKeyToOne(t *testing.T) {
	var s claimSet
	var won atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.claim("a.example.com") {
				won.Add(1)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d claims succeeded, want 1", won.Load())
	}
	if !s.claim("b.example.com") {
		t.Error("another key is refused")
	}
	s.release("a.example.com")
	if !s.claim("a.example.com") {
		t.Error("a released key is refused")
	}
}
