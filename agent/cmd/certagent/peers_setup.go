package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/peer"
	"github.com/certagent/certagent/agent/store"
)

// newFleet builds the view of the other sites from the peer flags, with
// the configuration it was built from, or returns nils when --site is not
// set (one site, no peers).
func newFleet(c *cli.Context, st *store.Store, log *slog.Logger) (*peer.Fleet, *peer.Config, error) {
	cfg, err := peerConfig(c, st, log)
	if cfg == nil || err != nil {
		return nil, nil, err
	}
	fleet, err := peer.NewFleet(*cfg)
	if err != nil {
		return nil, nil, usageErrorf("certagent: peer sites: %v", err)
	}
	return fleet, cfg, nil
}

// peerConfig reads the peer flags; nil without --site.
func peerConfig(c *cli.Context, st *store.Store, log *slog.Logger) (*peer.Config, error) {
	site := strings.TrimSpace(c.String(flagSite))
	peers, err := peer.ParsePeers(c.StringSlice(flagPeer))
	if err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagPeer, err)
	}
	if file := c.String(flagPeersFile); file != "" {
		more, err := peer.ReadPeersFile(file)
		if err != nil {
			return nil, usageErrorf("certagent: --%s: %v", flagPeersFile, err)
		}
		peers = append(peers, more...)
	}
	if site == "" {
		if len(peers) > 0 {
			return nil, usageErrorf("certagent: peer sites need --%s, this site's id", flagSite)
		}
		// Answering peers without being one would run a single site that
		// the other sites never reach, and say nothing.
		if c.String(flagPeerListen) != "" {
			return nil, usageErrorf("certagent: --%s needs --%s, this site's id, and the peer sites",
				flagPeerListen, flagSite)
		}
		return nil, nil
	}
	secretFile := c.String(flagPeerSecretFile)
	if secretFile == "" {
		return nil, usageErrorf("certagent: --%s needs --%s", flagSite, flagPeerSecretFile)
	}
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagPeerSecretFile, err)
	}
	roots, err := peerRoots(c.StringSlice(flagPeerCA))
	if err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagPeerCA, err)
	}
	return &peer.Config{
		Site:         site,
		Secret:       []byte(strings.TrimSpace(string(secret))),
		Peers:        peers,
		RootCAs:      roots,
		Timeout:      c.Duration(flagPeerTimeout),
		TokenRule:    c.String(flagPeerTokenRule),
		Quorum:       c.Int(flagPeerQuorum),
		SyncInterval: c.Duration(flagPeerSyncInterval),
		Store:        st,
		Logger:       log,
	}, nil
}

// startPeers runs, for `certagent run --peer-listen`, the peer API and the
// loops that push this site's changes and pull what the peers hold.
// startPeers opens the peer API and starts the sync with the peer sites,
// which stops at the end of ctx. The peer API serves until the context of
// the returned run ends (after the workers, which may still ask the peers).
func startPeers(ctx context.Context, c *cli.Context, fleet *peer.Fleet, cfg *peer.Config, st *store.Store, log *slog.Logger) (run func(context.Context) error, err error) {
	addr := c.String(flagPeerListen)
	if addr == "" {
		return nil, nil
	}
	certFile, keyFile := c.String(flagPeerTLSCert), c.String(flagPeerTLSKey)
	if certFile == "" || keyFile == "" {
		return nil, usageErrorf("certagent: --%s needs --%s and --%s (the peer API is HTTPS only)",
			flagPeerListen, flagPeerTLSCert, flagPeerTLSKey)
	}
	ids := make([]string, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		ids = append(ids, p.ID)
	}
	server, err := peer.NewServer(peer.ServerConfig{Site: cfg.Site, Secret: cfg.Secret, Peers: ids, Store: st, Logger: log})
	if err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagPeerListen, err)
	}
	if err := server.Start(addr, certFile, keyFile); err != nil {
		return nil, usageErrorf("certagent: --%s: %v", flagPeerListen, err)
	}
	syncer := peer.NewSyncer(fleet)
	syncer.Start(ctx)
	log.Info("peer API listening", "site", cfg.Site, "address", server.Addr(), "peers", strings.Join(ids, ","))
	return func(ctx context.Context) error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = syncer.Shutdown(shutdownCtx)
		_ = server.Shutdown(shutdownCtx)
		return nil
	}, nil
}

// fleetPeers lets the manager use the fleet.
type fleetPeers struct{ fleet *peer.Fleet }

func (p fleetPeers) Existing(ctx context.Context, names []string, have *store.CertRecord) (*store.CertRecord, error) {
	return p.fleet.Existing(ctx, names, have)
}

func (p fleetPeers) Lease(ctx context.Context, name string) (manager.PeerLease, error) {
	lease, err := p.fleet.Lease(ctx, name)
	if err != nil {
		return nil, err
	}
	return lease, nil
}

// peerRoots are the roots trusted for the peer sites' certificates: only the
// given files when there are any (a fleet's private CA, so that no public CA
// can vouch for a peer), else the system roots.
func peerRoots(files []string) (*x509.CertPool, error) {
	var pool *x509.CertPool
	for _, file := range files {
		if strings.TrimSpace(file) == "" {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		if pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s holds no PEM certificate", file)
		}
	}
	if pool == nil {
		return x509.SystemCertPool()
	}
	return pool, nil
}
