package backoff

import (
	"testing"
	"time"
)

func TestDoublingAfterAndNextAgree(t *testing.T) {
	d := Doubling{First: time.Second, Most: 10 * time.Second}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	var prev time.Duration
	for i, w := range want {
		if got := d.After(i + 1); got != w {
			t.Errorf("After(%d) = %s, want %s", i+1, got, w)
		}
		if prev = d.Next(prev); prev != w {
			t.Errorf("Next, step %d = %s, want %s", i+1, prev, w)
		}
	}
	if got := d.After(1000); got != 10*time.Second {
		t.Errorf("After(1000) = %s: the loop must stop at the cap", got)
	}
	if got := (Doubling{First: time.Minute, Most: time.Second}).Next(0); got != time.Second {
		t.Errorf("a first pause over the cap gives %s, want the cap", got)
	}
}

func TestBackoffResets(t *testing.T) {
	b := New(500*time.Millisecond, 5*time.Second)
	for _, w := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second} {
		if got := b.Next(); got != w {
			t.Fatalf("Next = %s, want %s", got, w)
		}
	}
	b.Reset()
	if got := b.Next(); got != 500*time.Millisecond {
		t.Errorf("Next after Reset = %s, want the first pause", got)
	}
}
