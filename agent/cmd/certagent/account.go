package main

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

func accountCommand() *cli.Command {
	return &cli.Command{
		Name:  "account",
		Usage: "show or register the ACME account the agents share",
		Description: "The account key is kept in Redis, one per CA and e-mail, and shared by every agent. `show` " +
			"prints what is stored (never the key itself, only its public key's SHA-256); `register` creates the " +
			"account at the CA if it is not registered yet (with External Account Binding when --eab-kid and " +
			"--eab-hmac are given) and prints it.\n\nExamples:\n" +
			"  certagent account show --email ops@example.com\n" +
			"  certagent account register --acme-directory https://acme.example/dir --eab-kid KID --eab-hmac HMAC",
		Subcommands: []*cli.Command{
			{
				Name:   "show",
				Usage:  "print the stored account of --acme-directory and --email",
				Flags:  withFlags(redisFlags(), acmeFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
				Action: accountShowAction,
			},
			{
				Name:   "register",
				Usage:  "register the account at the CA unless it is registered, then print it",
				Flags:  withFlags(redisFlags(), acmeFlags(), []cli.Flag{&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"}}),
				Action: accountRegisterAction,
			},
		},
	}
}

type accountView struct {
	ID              string `json:"id"`
	Directory       string `json:"directory"`
	Email           string `json:"email"`
	URI             string `json:"uri"`
	Registered      bool   `json:"registered"`
	PublicKeySHA256 string `json:"public_key_sha256,omitempty"`
}

func accountShowAction(c *cli.Context) error {
	if err := noArgs(c, "account show"); err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	dir := acmeclient.ResolveDirectory(c.String(flagDirectory))
	info, err := st.GetAccount(c.Context, dir, c.String(flagEmail))
	if errors.Is(err, store.ErrNotFound) {
		return cli.Exit(fmt.Sprintf("certagent account: no account stored for %q at %s (`certagent account register` creates it)",
			c.String(flagEmail), dir), exitFailed)
	}
	if err != nil {
		return err
	}
	return printAccount(c, info)
}

func accountRegisterAction(c *cli.Context) error {
	if err := noArgs(c, "account register"); err != nil {
		return err
	}
	st, err := openStore(c)
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
	// Building the client registers the account when it has no URL yet.
	if _, err := acmeclient.New(ctx, cfgs[0], st, acmeclient.NewHTTP01Provider(st, 0)); err != nil {
		return cli.Exit(fmt.Sprintf("certagent account: %v", err), exitFailed)
	}
	info, err := st.GetAccount(ctx, acmeclient.ResolveDirectory(c.String(flagDirectory)), c.String(flagEmail))
	if err != nil {
		return err
	}
	return printAccount(c, info)
}

func printAccount(c *cli.Context, info *store.AccountInfo) error {
	v := accountView{ID: info.ID, Directory: info.Directory, Email: info.Email, URI: info.URI, Registered: info.URI != ""}
	if block, _ := pem.Decode([]byte(info.KeyPEM)); block != nil {
		if key, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			if signer, ok := key.(crypto.Signer); ok {
				pub, _ := x509.MarshalPKIXPublicKey(signer.Public())
				sum := sha256.Sum256(pub)
				v.PublicKeySHA256 = hex.EncodeToString(sum[:])
			}
		}
	}
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, v)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", v.ID)
	fmt.Fprintf(tw, "directory:\t%s\n", v.Directory)
	fmt.Fprintf(tw, "e-mail:\t%s\n", v.Email)
	fmt.Fprintf(tw, "registered:\t%t\n", v.Registered)
	fmt.Fprintf(tw, "uri:\t%s\n", v.URI)
	fmt.Fprintf(tw, "public key:\tSHA-256 %s\n", v.PublicKeySHA256)
	return tw.Flush()
}
