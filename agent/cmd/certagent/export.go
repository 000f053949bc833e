package main

import (
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write the certificate and private key stored for a name to files",
		ArgsUsage: "NAME",
		Description: "Writes DIR/fullchain.pem, DIR/cert.pem (the leaf), DIR/chain.pem (the intermediates) and " +
			"DIR/privkey.pem (PKCS #8, mode 0600) in certbot's layout, creating DIR (mode 0700) if needed; existing " +
			"files are replaced. This is the only command that writes a private key, and it writes it only to " +
			"the file. Exits 1 when no certificate is stored, 2 on bad arguments.\n\nExamples:\n" +
			"  certagent export shop.example.com --out /etc/ssl/shop\n" +
			"  certagent export '*.example.com' --out ./wildcard",
		Flags: withFlags(redisFlags(), []cli.Flag{
			&cli.StringFlag{Name: flagOut, Usage: "directory to write the files to (required)"},
		}),
		Action: exportAction,
	}
}

func exportAction(c *cli.Context) error {
	args, err := nameArgs(c, "export")
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usageErrorf("certagent export: name exactly one NAME")
	}
	if c.String(flagOut) == "" {
		return usageErrorf("certagent export: --out DIR is required")
	}
	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	rec, err := st.GetCert(c.Context, args[0])
	if errors.Is(err, store.ErrNotFound) {
		return failedf("certagent export: no certificate stored for %s", args[0])
	}
	if err != nil {
		return err
	}
	var leaf, chain []byte
	rest := []byte(rec.FullChain)
	for i := 0; ; i++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if i == 0 {
			leaf = pem.EncodeToMemory(block)
		} else {
			chain = append(chain, pem.EncodeToMemory(block)...)
		}
	}
	dir := c.String(flagOut)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return failedf("certagent export: %v", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"fullchain.pem", []byte(rec.FullChain), 0o644},
		{"cert.pem", leaf, 0o644},
		{"chain.pem", chain, 0o644},
		{"privkey.pem", []byte(rec.Key), 0o600},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return failedf("certagent export: %v", err)
		}
	}
	fmt.Fprintf(c.App.Writer, "exported  %s  to %s (fullchain.pem, cert.pem, chain.pem, privkey.pem)\n", args[0], dir)
	return nil
}

// writeFileAtomic writes through a temporary file created with mode (so a
// key is never readable by others, not even for a moment) and renames it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
