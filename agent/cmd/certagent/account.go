package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

func accountCommand() *cli.Command {
	return &cli.Command{
		Name:  "account",
		Usage: "show or register the ACME account the agents share",
		Description: "The account key is kept in Redis, one per CA and e-mail, and shared by every agent. Both " +
			"subcommands ask the CA. `show` prints what is stored (never the key itself, only its public key's " +
			"SHA-256) and what the CA holds for that key, creating nothing; it exits 1 when the CA knows no " +
			"account for the key or cannot be asked. `register` registers the account at the CA unless the CA " +
			"holds it already (with External Account Binding when --eab-kid and --eab-hmac are given), registers " +
			"it again when the CA has lost it (as the agents do), and prints it.\n\nExamples:\n" +
			"  certagent account show --email ops@example.com\n" +
			"  certagent account register --acme-directory https://acme.example/dir --eab-kid KID --eab-hmac HMAC",
		Subcommands: []*cli.Command{
			{
				Name:   "show",
				Usage:  "print the stored account of --acme-directory and --email, and what the CA holds for its key",
				Flags:  withFlags(redisFlags(), acmeFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
				Action: accountShowAction,
			},
			{
				Name:   "register",
				Usage:  "register the account at the CA unless the CA holds it, then print it",
				Flags:  withFlags(redisFlags(), acmeFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
				Action: accountRegisterAction,
			},
		},
	}
}

type accountView struct {
	ID        string `json:"id"`
	Directory string `json:"directory"`
	Email     string `json:"email"`
	// URI is the stored account URL.
	URI string `json:"uri"`
	// Registered: the CA holds a valid account for the stored key.
	Registered bool `json:"registered"`
	// CAStatus is what the CA says of the key's account: valid, deactivated,
	// revoked, "none" (it knows no account for the key) or "unknown" (it
	// could not be asked; CAError says why).
	CAStatus string `json:"ca_status"`
	// CAURI is the account URL the CA returned for the key, when it holds one.
	CAURI           string   `json:"ca_uri,omitempty"`
	CAContact       []string `json:"ca_contact,omitempty"`
	CAError         string   `json:"ca_error,omitempty"`
	PublicKeySHA256 string   `json:"public_key_sha256,omitempty"`
}

func accountShowAction(c *cli.Context) error {
	if err := noArgs(c, "account show"); err != nil {
		return err
	}
	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	cfgs, err := acmeConfigs(c)
	if err != nil {
		return err
	}
	ctx, stop := withSignals(c.Context)
	defer stop()
	info, err := st.GetAccount(ctx, cfgs[0].DirectoryURL, cfgs[0].Email)
	if errors.Is(err, store.ErrNotFound) {
		return failedf("certagent account: no account stored for %q at %s (`certagent account register` creates it)",
			cfgs[0].Email, cfgs[0].DirectoryURL)
	}
	if err != nil {
		return err
	}
	v := newAccountView(info)
	status, err := acmeclient.LookupAccount(ctx, cfgs[0], info.KeyPEM)
	switch {
	case errors.Is(err, acmeclient.ErrNoAccount):
		v.CAStatus = "none"
	case err != nil:
		v.CAStatus, v.CAError = "unknown", err.Error()
	default:
		v.setCA(status)
	}
	if err := printAccount(c, v); err != nil {
		return err
	}
	switch {
	case v.CAStatus == "none":
		return failedf("certagent account: the CA at %s knows no account for the stored key "+
			"(the agents register it again at their next order; `certagent account register` does it now)", v.Directory)
	case v.CAError != "":
		return failedf("certagent account: asking the CA: %s", v.CAError)
	case !v.Registered:
		return failedf("certagent account: the CA says the account is %s", v.CAStatus)
	}
	return nil
}

func accountRegisterAction(c *cli.Context) error {
	if err := noArgs(c, "account register"); err != nil {
		return err
	}
	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	ctx, stop := withSignals(c.Context)
	defer stop()
	cfgs, err := acmeConfigs(c)
	if err != nil {
		return err
	}
	cfg := cfgs[0]
	var changed *acmeclient.AccountChange
	cfg.AccountChanged = func(ch acmeclient.AccountChange) { changed = &ch }
	// Connecting registers the account when it has no URL yet; asking the
	// CA for it registers it again when the CA has lost it.
	status, err := acmeclient.NewLazy(cfg, st, acmeclient.NewHTTP01Provider(st, 0)).Account(ctx)
	if err != nil {
		return failedf("certagent account: %v", err)
	}
	if changed != nil {
		fmt.Fprintf(c.App.ErrWriter, "certagent account: the CA no longer knew %s; now registered as %s\n",
			changed.OldURI, changed.NewURI)
	}
	info, err := st.GetAccount(ctx, cfg.DirectoryURL, cfg.Email)
	if err != nil {
		return err
	}
	v := newAccountView(info)
	v.setCA(status)
	if err := printAccount(c, v); err != nil {
		return err
	}
	if !v.Registered {
		return failedf("certagent account: the CA says the account is %s", v.CAStatus)
	}
	return nil
}

// reportAccountChange logs an account registered again after the CA lost it
// and, from the agent that registered it, sends an event.
func reportAccountChange(ctx context.Context, log *slog.Logger, events *telemetry.Hub) func(acmeclient.AccountChange) {
	return func(ch acmeclient.AccountChange) {
		if !ch.Registered {
			log.Info("using the ACME account another agent registered again", "ca", ch.Directory,
				"old_account", ch.OldURI, "account", ch.NewURI)
			return
		}
		how := "registered a new account"
		switch {
		case ch.Found:
			how = "the CA still knew the key"
		case ch.NewKey:
			how = "registered a new account with a new key (the CA refused the old one)"
		}
		events.Emit(ctx, telemetry.Event{Type: telemetry.EventAccount,
			Reason: fmt.Sprintf("the CA %s no longer knew the ACME account %s: %s, now %s", ch.Directory, ch.OldURI, how, ch.NewURI),
			Error:  fmt.Sprint(ch.Cause)})
	}
}

func newAccountView(info *store.AccountInfo) accountView {
	v := accountView{ID: info.ID, Directory: info.Directory, Email: info.Email, URI: info.URI}
	if block, _ := pem.Decode([]byte(info.KeyPEM)); block != nil {
		if key, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			if signer, ok := key.(crypto.Signer); ok {
				pub, _ := x509.MarshalPKIXPublicKey(signer.Public())
				sum := sha256.Sum256(pub)
				v.PublicKeySHA256 = hex.EncodeToString(sum[:])
			}
		}
	}
	return v
}

// setCA records the CA's answer about the account.
func (v *accountView) setCA(status *acmeclient.AccountStatus) {
	v.CAStatus, v.CAURI, v.CAContact = status.Status, status.URI, status.Contact
	v.Registered = status.Status == "valid"
}

func printAccount(c *cli.Context, v accountView) error {
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, v)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", v.ID)
	fmt.Fprintf(tw, "directory:\t%s\n", v.Directory)
	fmt.Fprintf(tw, "e-mail:\t%s\n", v.Email)
	fmt.Fprintf(tw, "registered:\t%t\n", v.Registered)
	fmt.Fprintf(tw, "uri:\t%s\n", v.URI)
	status := v.CAStatus
	if v.CAError != "" {
		status += " (" + v.CAError + ")"
	}
	fmt.Fprintf(tw, "at the CA:\t%s\n", status)
	if v.CAURI != "" && v.CAURI != v.URI {
		fmt.Fprintf(tw, "CA's uri:\t%s (differs from the stored one)\n", v.CAURI)
	}
	if len(v.CAContact) > 0 {
		fmt.Fprintf(tw, "contact:\t%s\n", strings.Join(v.CAContact, ", "))
	}
	fmt.Fprintf(tw, "public key:\tSHA-256 %s\n", v.PublicKeySHA256)
	return tw.Flush()
}
