package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/manager"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

func revokeCommand() *cli.Command {
	return &cli.Command{
		Name:      "revoke",
		Usage:     "revoke the certificate stored for a name at its CA, then delete it (or replace it with --reissue)",
		ArgsUsage: "NAME",
		Description: "Asks the CA that issued the certificate stored under NAME to revoke it (signed by the ACME " +
			"account of --acme-directory/--fallback-directory and --email that ordered it), then removes it from " +
			"Redis, so nginx stops serving it within its freshness bound and falls back (or, with --reissue, serves a " +
			"new certificate ordered right away). Exits 1 when no certificate is stored or the CA refuses, 2 on bad " +
			"arguments.\n\nReasons: " + reasonNames() + " (or their RFC 5280 numbers).\n\nExamples:\n" +
			"  certagent revoke shop.example.com\n" +
			"  certagent revoke --reason keyCompromise --reissue shop.example.com",
		Flags: withFlags(redisFlags(), acmeFlags(), peerFlags(), []cli.Flag{
			&cli.StringFlag{Name: flagReason, Value: "unspecified", Usage: "revocation reason: " + reasonNames()},
			&cli.BoolFlag{Name: flagReissue, Usage: "order a new certificate for the same names at once instead of deleting"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: revokeAction,
	}
}

func reasonNames() string {
	var out []string
	for name := range acmeclient.RevocationReasons {
		out = append(out, name)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func parseReason(s string) (uint, error) {
	if code, ok := acmeclient.RevocationReasons[s]; ok {
		return code, nil
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		for _, code := range acmeclient.RevocationReasons {
			if uint(n) == code {
				return code, nil
			}
		}
	}
	return 0, fmt.Errorf("unknown revocation reason %q (want %s)", s, reasonNames())
}

// What signed a revocation the CA accepted, as revoke reports it.
const (
	signedWithAccount = "account"
	signedWithCertKey = "certificate-key"
)

// revokeAtCA revokes rec with this site's account, and when the CA answers
// that this account did not order it (another site's did: each site has its
// own account, docs/peers.md), with the certificate's own key. It returns
// which of the two signed the revocation.
func revokeAtCA(ctx context.Context, revoker manager.Revoker, rec *store.CertRecord, reason uint) (string, error) {
	err := revoker.Revoke(ctx, []byte(rec.FullChain), reason)
	byKey, ok := revoker.(manager.CertKeyRevoker)
	if err == nil || !ok || !acmeclient.NotThisAccounts(err) {
		return signedWithAccount, err
	}
	if keyErr := byKey.RevokeWithCertKey(ctx, []byte(rec.FullChain), []byte(rec.Key), reason); keyErr != nil {
		return "", fmt.Errorf("%w; then with the certificate's key: %w", err, keyErr)
	}
	return signedWithCertKey, nil
}

type revokeView struct {
	Name    string `json:"name"`
	Serial  string `json:"serial"`
	Revoked bool   `json:"revoked"`
	// SignedWith is what signed the revocation: this site's ACME account,
	// or the certificate's own key (another site's account ordered it).
	SignedWith string    `json:"signed_with"`
	Deleted    []string  `json:"deleted,omitempty"`
	Reissued   *certView `json:"reissued,omitempty"`
}

func revokeAction(c *cli.Context) error {
	args, err := nameArgs(c, "revoke")
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usageErrorf("certagent revoke: name exactly one NAME")
	}
	reason, err := parseReason(c.String(flagReason))
	if err != nil {
		return usageErrorf("certagent revoke: %v", err)
	}
	s, err := openSession(c)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, st, mgr, events := s.ctx, s.store, s.mgr, s.events
	rec, err := st.GetCert(ctx, args[0])
	if errors.Is(err, store.ErrNotFound) {
		return failedf("certagent revoke: no certificate stored for %s", args[0])
	}
	if err != nil {
		return err
	}
	revoker, ok := mgr.IssuerFor(rec.CA).(manager.Revoker)
	if !ok {
		ca := rec.CA
		if ca == "" {
			ca = "an unknown CA (imported)"
		}
		return failedf("certagent revoke: the certificate for %s was issued by %s, which is not among the configured directories (--%s, --%s)",
			args[0], ca, flagDirectory, flagFallbacks)
	}
	signedWith, err := revokeAtCA(ctx, revoker, rec, reason)
	if err != nil {
		return failedf("certagent revoke: revoking certificate for %s: %v", args[0], err)
	}
	events.Emit(ctx, telemetry.Event{Type: telemetry.EventRevoked, Name: args[0], Names: rec.Names,
		NotAfter: rec.NotAfter, Fingerprint: rec.Fingerprint, Reason: c.String(flagReason)})
	view := revokeView{Name: args[0], Serial: rec.Serial, Revoked: true, SignedWith: signedWith}
	// A revoked certificate must not stay served: replace it or remove it.
	if c.Bool(flagReissue) {
		newRec, err := mgr.Issue(ctx, rec.Names)
		if err != nil {
			// Better the fallback certificate than a revoked one.
			deleted, derr := st.DeleteCert(ctx, args[0])
			return failedf("certagent revoke: serial %s revoked, but ordering its replacement failed (%v); deleted %v (%v)",
				rec.Serial, err, deleted, derr)
		}
		v := viewOf(rec.Primary(), newRec)
		view.Reissued = &v
	} else {
		deleted, err := st.DeleteCert(ctx, args[0])
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return failedf("certagent revoke: serial %s revoked, but deleting it failed: %v (run `certagent delete %s`)",
				rec.Serial, err, args[0])
		}
		view.Deleted = deleted
	}
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, view)
	}
	fmt.Fprintf(c.App.Writer, "revoked   %s  serial=%s  signed_with=%s\n", view.Name, view.Serial, view.SignedWith)
	if view.Reissued != nil {
		fmt.Fprintf(c.App.Writer, "reissued  %s  serial=%s  not_after=%s\n", view.Name, view.Reissued.Serial,
			view.Reissued.NotAfter.Format("2006-01-02T15:04:05Z"))
	} else {
		fmt.Fprintf(c.App.Writer, "deleted   %s\n", strings.Join(view.Deleted, " "))
	}
	return nil
}
