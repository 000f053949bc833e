package main

import (
	"fmt"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
)

func peersCommand() *cli.Command {
	return &cli.Command{
		Name:  "peers",
		Usage: "the peer sites: reachable now, and what this site's agents saw of them",
		Description: "For each configured peer site (--site, --peer, --peers-file, --peer-secret-file, --peer-ca), " +
			"calls its health endpoint now, signed like an agent's request, and prints the answer and its delay, " +
			"next to the view the running agents of this site recorded in Redis: up or down, the last success and " +
			"error, the last inventory exchange and how many certificates it brought or took. Exits 1 when a peer " +
			"does not answer." +
			"\n\nExamples:\n  certagent peers\n  certagent peers --json",
		Flags:  withFlags(redisFlags(), peerFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
		Action: peersAction,
	}
}

type peerView struct {
	ID          string    `json:"id"`
	URL         string    `json:"url"`
	Up          bool      `json:"up"` // answered the probe just now
	ProbeMillis int64     `json:"probe_ms"`
	ProbeError  string    `json:"probe_error,omitempty"`
	Certs       int64     `json:"certificates"` // as the peer reported
	SeenUp      bool      `json:"agent_saw_up"`
	LastOK      time.Time `json:"last_ok,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	LastSync    time.Time `json:"last_sync,omitzero"`
	Pulled      int64     `json:"pulled"`
	Pushed      int64     `json:"pushed"`
	Agent       string    `json:"agent,omitempty"`
}

// peersAction prints this site's view of its peers. Long because it
// merges three sources (the configuration, the stored peer states and the
// probes) into one table.
func peersAction(c *cli.Context) error {
	if err := noArgs(c, "peers"); err != nil {
		return err
	}
	st, log, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	fleet, _, err := newFleet(c, st, log)
	if err != nil {
		return err
	}
	if fleet == nil {
		return usageErrorf("certagent peers: no peer sites configured (--%s, --%s)", flagSite, flagPeer)
	}
	recorded, err := st.PeerStates(c.Context)
	if err != nil {
		return failedf("certagent peers: %v", err)
	}
	seen := map[string]store.PeerState{}
	for _, s := range recorded {
		seen[s.ID] = s
	}
	clients := fleet.Clients()
	views := make([]peerView, len(clients))
	var wg sync.WaitGroup
	for i, client := range clients {
		s := seen[client.ID()]
		views[i] = peerView{ID: client.ID(), URL: client.URL(), SeenUp: s.Up, LastOK: s.LastOK, LastError: s.LastError,
			LastErrorAt: s.LastErrorAt, LastSync: s.LastSync, Pulled: s.Pulled, Pushed: s.Pushed, Agent: s.Agent}
		wg.Add(1)
		go func(v *peerView) {
			defer wg.Done()
			start := time.Now()
			health, err := client.Health(c.Context)
			v.ProbeMillis = time.Since(start).Milliseconds()
			if err != nil {
				v.ProbeError = err.Error()
				return
			}
			v.Up, v.Certs = true, health.Certificates
		}(&views[i])
	}
	wg.Wait()

	if c.Bool(flagJSON) {
		if err := writeJSON(c.App.Writer, views); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tURL\tNOW\tCERTIFICATES\tAGENTS SAW\tLAST SYNC\tPULLED\tPUSHED\tLAST ERROR")
		for _, v := range views {
			now := fmt.Sprintf("up %dms", v.ProbeMillis)
			if !v.Up {
				now = "down: " + oneLine(v.ProbeError)
			}
			saw := "down"
			if v.SeenUp {
				saw = "up"
			}
			if v.Agent == "" {
				saw = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", v.ID, v.URL, now, v.Certs, saw,
				stamp(v.LastSync), v.Pulled, v.Pushed, oneLine(v.LastError))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, v := range views {
		if !v.Up {
			return failedf("")
		}
	}
	return nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}
