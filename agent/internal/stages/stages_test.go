package stages

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTraceLogsEachStepSinceTheLast: the marks come out in order, each with
// the time since the mark before it (the first since the trace's start).
func TestTraceLogsEachStepSinceTheLast(t *testing.T) {
	ctx, trace := With(context.Background())
	time.Sleep(20 * time.Millisecond)
	Mark(ctx, "first")
	Mark(ctx, "second")
	time.Sleep(20 * time.Millisecond)
	Mark(ctx, "first")
	got := trace.LogValue().String()
	if !regexp.MustCompile(`^first:\d+\.\d,second:\d+\.\d,first:\d+\.\d$`).MatchString(got) {
		t.Fatalf("LogValue = %q, want first:ms,second:ms,first:ms", got)
	}
	ms := func(part string) float64 {
		_, v, _ := strings.Cut(part, ":")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	parts := strings.Split(got, ",")
	if first := ms(parts[0]); first < 19 {
		t.Errorf("the first step took %.1f ms, want 20 ms or more since the start", first)
	}
	if last := ms(parts[2]); last < 19 {
		t.Errorf("the last step took %.1f ms, want 20 ms or more since the one before", last)
	}
	if total := ms(parts[0]) + ms(parts[1]) + ms(parts[2]); total > float64(time.Since(trace.Start()))/1e6+0.1 {
		t.Errorf("the steps add up to %.1f ms, more than the trace's age", total)
	}
	if trace.Start().After(time.Now().Add(-40 * time.Millisecond)) {
		t.Errorf("Start %s is not when the trace began", trace.Start())
	}
}

// TestMarkWithoutTrace: a context without a trace marks nothing and does
// not fail.
func TestMarkWithoutTrace(t *testing.T) {
	Mark(context.Background(), "nothing")
	_, trace := With(context.Background())
	if got := trace.LogValue().String(); got != "" {
		t.Errorf("a trace without marks logs %q, want nothing", got)
	}
}
