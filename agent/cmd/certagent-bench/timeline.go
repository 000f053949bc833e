package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// traceLine is one name of a `first -trace` file: when its first
// ClientHello went out and when a verified certificate came back.
type traceLine struct {
	Name  string    `json:"name"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end,omitzero"`
}

// traceWriter appends the traceLines of `first -trace`; a nil one writes
// nothing.
type traceWriter struct {
	mu  sync.Mutex
	f   *os.File
	enc *json.Encoder
	err error
}

func openTrace(path string) (*traceWriter, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening trace %s: %w", path, err)
	}
	return &traceWriter{f: f, enc: json.NewEncoder(f)}, nil
}

// add records name; one that got no verified certificate has no end.
func (w *traceWriter) add(name string, t nameTiming) {
	if w == nil {
		return
	}
	line := traceLine{Name: name, Start: t.began}
	if t.real {
		line.End = t.began.Add(t.elapsed)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.enc.Encode(line); err != nil && w.err == nil {
		w.err = fmt.Errorf("writing trace: %w", err)
	}
}

func (w *traceWriter) close() error {
	if w == nil {
		return nil
	}
	return errors.Join(w.err, w.f.Close())
}

// agentEvent is what the agent's log says of one name: when its stream
// entry reached the agent ("name requested", logged at debug level) and
// when its certificate was stored ("certificate issued", with how long the
// order ran, lease and slot included).
type agentEvent struct {
	requested, issued time.Time
	took              time.Duration
	// steps is the agent's "entry handled" trace: each step's time, by
	// label (a step met several times, such as a poll, summed), in order;
	// written is when its certificate write ended (from the trace).
	steps   []step
	written time.Time
}

// writtenStep is the agent's step that ends with the certificate in Redis.
const writtenStep = "cert_write"

// writtenAt is when the step writtenStep ended, by a trace that started at
// started (zero without that step).
func writtenAt(started time.Time, steps []step) time.Time {
	at := started
	for _, st := range steps {
		at = at.Add(st.took)
		if st.label == writtenStep {
			return at
		}
	}
	return time.Time{}
}

type step struct {
	label string
	took  time.Duration
	times int // how many times the step was made
}

// timeline splits the time from first ClientHello to verified certificate
// of every name of a `first -trace` file into the pipeline's stages, from the
// agent's log (text format, debug level), and prints their p50 and p95.
func timeline(args []string) error {
	if len(args) != 2 {
		return errors.New("timeline TRACE AGENT-LOG")
	}
	traces, err := readTrace(args[0])
	if err != nil {
		return err
	}
	events, err := readAgentLog(args[1])
	if err != nil {
		return err
	}
	stages := []struct {
		label string
		of    func(traceLine, agentEvent) time.Duration
	}{
		{"ClientHello to the agent reading the entry (Lua, XADD, stream read)",
			func(t traceLine, e agentEvent) time.Duration { return e.requested.Sub(t.Start) }},
		{"entry read to order start (policy, budgets, failure record)",
			func(t traceLine, e agentEvent) time.Duration { return e.issued.Add(-e.took).Sub(e.requested) }},
		{"order: lease, slot, ACME, certificate written",
			func(_ traceLine, e agentEvent) time.Duration { return e.written.Sub(e.issued.Add(-e.took)) }},
		{"certificate written to verified handshake (changes stream, wait's poll, TLS)",
			func(t traceLine, e agentEvent) time.Duration { return t.End.Sub(e.written) }},
		{"total: ClientHello to verified certificate",
			func(t traceLine, _ agentEvent) time.Duration { return t.End.Sub(t.Start) }},
	}
	matched := 0
	values := make([][]time.Duration, len(stages))
	for _, t := range traces {
		e, ok := events[t.Name]
		if !ok || e.requested.IsZero() || e.issued.IsZero() || e.written.IsZero() || t.End.IsZero() {
			continue
		}
		matched++
		for i, s := range stages {
			values[i] = append(values[i], s.of(t, e))
		}
	}
	fmt.Printf("%d of %d names traced through the agent's log\n\n", matched, len(traces))
	fmt.Println("| stage | p50 ms | p95 ms |")
	fmt.Println("|---|---|---|")
	for i, s := range stages {
		sort.Slice(values[i], func(a, b int) bool { return values[i][a] < values[i][b] })
		fmt.Printf("| %s | %.0f | %.0f |\n", s.label, percentile(values[i], 0.50), percentile(values[i], 0.95))
	}
	fmt.Println("\nThe agent's steps, from the worker taking the entry (ms; a repeated step summed per name):")
	var traced []string
	for _, t := range traces {
		traced = append(traced, t.Name)
	}
	printSteps(os.Stdout, traced, events)
	return nil
}

// names are the names of pattern, from 0 to count-1.
func names(pattern string, count int) []string {
	out := make([]string, count)
	for i := range out {
		out[i] = fmt.Sprintf(pattern, i)
	}
	return out
}

// printSteps prints to w the p50 and p95 of each step of the work on the
// given names (the agent's "entry handled" lines), in the order the steps
// come.
func printSteps(w io.Writer, traced []string, events map[string]agentEvent) {
	var labels []string
	values := map[string][]time.Duration{}
	times := map[string]int{}
	for _, n := range traced {
		for _, st := range events[n].steps {
			if _, ok := values[st.label]; !ok {
				labels = append(labels, st.label)
			}
			values[st.label] = append(values[st.label], st.took)
			times[st.label] += st.times
		}
	}
	if len(labels) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| step | names | times a name | p50 ms | p95 ms |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, l := range labels {
		v := values[l]
		sort.Slice(v, func(a, b int) bool { return v[a] < v[b] })
		fmt.Fprintf(w, "| %s | %d | %.2f | %.1f | %.1f |\n", l, len(v), float64(times[l])/float64(len(v)),
			percentile(v, 0.50), percentile(v, 0.95))
	}
}

// parseSteps reads a trace logged as "label:ms,label:ms", summing a label's
// repeats.
func parseSteps(v string) []step {
	var out []step
	at := map[string]int{}
	for _, part := range strings.Split(v, ",") {
		label, ms, ok := strings.Cut(part, ":")
		f, err := strconv.ParseFloat(ms, 64)
		if !ok || err != nil {
			continue
		}
		d := time.Duration(f * float64(time.Millisecond))
		if i, seen := at[label]; seen {
			out[i].took += d
			out[i].times++
			continue
		}
		at[label] = len(out)
		out = append(out, step{label: label, took: d, times: 1})
	}
	return out
}

func readTrace(path string) ([]traceLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []traceLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var t traceLine
		if err := json.Unmarshal(sc.Bytes(), &t); err != nil {
			return nil, fmt.Errorf("reading trace %s: %w", path, err)
		}
		out = append(out, t)
	}
	return out, sc.Err()
}

// readAgentLog collects the events of every name from a text-format log.
func readAgentLog(path string) (map[string]agentEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	events := map[string]agentEvent{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		requested := strings.Contains(line, `msg="name requested"`)
		if strings.Contains(line, `msg="entry handled"`) {
			e := events[logField(line, "name")]
			if e.steps == nil { // the first entry of the name counts
				e.steps = parseSteps(logField(line, "stages"))
				if started, err := time.Parse(time.RFC3339Nano, logField(line, "started")); err == nil {
					e.written = writtenAt(started, e.steps)
				}
			}
			events[logField(line, "name")] = e
			continue
		}
		if !requested && !strings.Contains(line, `msg="certificate issued"`) {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, logField(line, "time"))
		if err != nil {
			return nil, fmt.Errorf("reading agent log %s: %w", path, err)
		}
		name := logField(line, "name")
		e := events[name]
		if requested {
			if e.requested.IsZero() { // the first request counts
				e.requested = at
			}
		} else {
			took, _ := strconv.ParseFloat(logField(line, "took_seconds"), 64)
			e.issued, e.took = at, time.Duration(took*float64(time.Second))
		}
		events[name] = e
	}
	return events, sc.Err()
}

// logField is the value of key in a key=value log line (unquoted values).
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		if !strings.HasPrefix(line, key+"=") {
			return ""
		}
		i = -1
	}
	v := line[i+len(key)+2:]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return strings.Trim(v, `"`)
}
