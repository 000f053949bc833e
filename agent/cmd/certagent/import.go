package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/store"
)

func importCommand() *cli.Command {
	return &cli.Command{
		Name:  "import",
		Usage: "store certificates obtained elsewhere (certbot's live directory, or a chain and key)",
		Description: "Reads every DIR/live/*/fullchain.pem with its privkey.pem (--certbot), or one chain and key " +
			"(--cert, --key), checks that each key matches its certificate, that the certificate is not expired and " +
			"that its names are valid, and stores them where nginx serves them. Everything is checked before " +
			"anything is stored: one bad file stores nothing (exit 2). A stored certificate that expires later than " +
			"the imported one is kept unless --force. Imported certificates are then renewed like any other (by the " +
			"configured CA, without ARI since it did not issue them).\n\nExamples:\n" +
			"  certagent import --certbot /etc/letsencrypt\n" +
			"  certagent import --cert shop.crt --key shop.key",
		Flags: withFlags(redisFlags(), []cli.Flag{
			&cli.StringFlag{Name: flagCertbot, Usage: "certbot's configuration directory (the one holding live/)"},
			&cli.StringFlag{Name: flagCert, Usage: "PEM file: the certificate, then its intermediates"},
			&cli.StringFlag{Name: flagKey, Usage: "PEM file: the private key of --cert"},
			&cli.BoolFlag{Name: flagForce, Usage: "replace stored certificates even when they expire later"},
			&cli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		}),
		Action: importAction,
	}
}

// importPair is one chain and key to import, with where they came from.
type importPair struct {
	source             string
	chainPEM, keyPEM   []byte
	chainPath, keyPath string
}

func importAction(c *cli.Context) error {
	dir, certFile, keyFile := c.String(flagCertbot), c.String(flagCert), c.String(flagKey)
	if c.NArg() > 0 || (dir == "") == (certFile == "" && keyFile == "") || (dir == "" && (certFile == "" || keyFile == "")) {
		return usageErrorf("certagent import: give either --certbot DIR or both --cert FILE and --key FILE")
	}
	var pairs []importPair
	var problems []string
	if dir != "" {
		var err error
		if pairs, err = certbotPairs(dir); err != nil {
			return usageErrorf("certagent import: %v", err)
		}
	} else {
		pairs = []importPair{{source: certFile, chainPath: certFile, keyPath: keyFile}}
	}
	now := time.Now()
	var recs []*store.CertRecord
	for i := range pairs {
		rec, err := checkPair(&pairs[i], now)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", pairs[i].source, err))
			continue
		}
		recs = append(recs, rec)
	}
	if len(problems) > 0 {
		return usageErrorf("certagent import: nothing was imported:\n  %s", strings.Join(problems, "\n  "))
	}

	st, _, err := openStoreAndLogger(c)
	if err != nil {
		return err
	}
	defer closeStore(st)
	type result struct {
		certView
		Outcome string `json:"outcome"`
	}
	var results []result
	for _, rec := range recs {
		outcome, err := storeImported(c.Context, st, rec, c.Bool(flagForce))
		if err != nil {
			return err
		}
		results = append(results, result{certView: viewOf(rec.Primary(), rec), Outcome: outcome})
	}
	if c.Bool(flagJSON) {
		return writeJSON(c.App.Writer, results)
	}
	for _, r := range results {
		fmt.Fprintf(c.App.Writer, "%-9s %s  names=%s  not_after=%s  serial=%s\n", r.Outcome, r.Name,
			strings.Join(r.Names, ","), r.NotAfter.Format(time.RFC3339), r.Serial)
	}
	return nil
}

// certbotPairs lists live/<lineage>/fullchain.pem and privkey.pem under dir.
func certbotPairs(dir string) ([]importPair, error) {
	live := filepath.Join(dir, "live")
	entries, err := os.ReadDir(live)
	if err != nil {
		return nil, fmt.Errorf("reading certbot's live directory: %w", err)
	}
	var pairs []importPair
	for _, e := range entries {
		// Lineages are directories (or links to them); live/README is not.
		path := filepath.Join(live, e.Name())
		if info, err := os.Stat(path); err != nil || !info.IsDir() {
			continue
		}
		pairs = append(pairs, importPair{source: path,
			chainPath: filepath.Join(path, "fullchain.pem"), keyPath: filepath.Join(path, "privkey.pem")})
	}
	if len(pairs) == 0 {
		return nil, fmt.Errorf("no certificate lineage under %s", live)
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].source < pairs[j].source })
	return pairs, nil
}

// checkPair reads and checks one chain and key and returns the record to
// store.
func checkPair(p *importPair, now time.Time) (*store.CertRecord, error) {
	var err error
	if p.chainPEM, err = os.ReadFile(p.chainPath); err != nil {
		return nil, err
	}
	if p.keyPEM, err = os.ReadFile(p.keyPath); err != nil {
		return nil, err
	}
	// Which file is wrong, before tls.X509KeyPair, whose errors do not say.
	if !hasPEM(p.chainPEM, func(t string) bool { return t == "CERTIFICATE" }) {
		return nil, fmt.Errorf("%s is not a PEM certificate chain (no CERTIFICATE block)", p.chainPath)
	}
	if !hasPEM(p.keyPEM, func(t string) bool { return strings.HasSuffix(t, "PRIVATE KEY") }) {
		return nil, fmt.Errorf("%s is not a PEM private key (no PRIVATE KEY block)", p.keyPath)
	}
	pair, err := tls.X509KeyPair(p.chainPEM, p.keyPEM)
	if err != nil {
		return nil, fmt.Errorf("the key in %s does not match the certificate in %s: %w", p.keyPath, p.chainPath, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	if !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(leaf.DNSNames) == 0 {
		return nil, errors.New("the certificate has no DNS names")
	}
	names := make([]string, 0, len(leaf.DNSNames))
	for _, n := range leaf.DNSNames {
		name, err := storedName(n)
		if err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	keyPEM, keyType, err := pkcs8(pair.PrivateKey)
	if err != nil {
		return nil, err
	}
	// Store the chain as nginx serves it: PEM certificates only, leaf first.
	var chain []byte
	for _, der := range pair.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	primary := names[0]
	if cn, err := storedName(leaf.Subject.CommonName); err == nil && slices.Contains(names, cn) {
		primary = cn
	}
	rec, err := store.NewCertRecord(chain, keyPEM, primary)
	if err != nil {
		return nil, err
	}
	rec.Names = append([]string{primary}, without(names, primary)...)
	rec.KeyType = keyType
	rec.IssuedAt = now
	return rec, nil
}

func storeImported(ctx context.Context, st *store.Store, rec *store.CertRecord, force bool) (string, error) {
	current, err := st.GetCert(ctx, rec.Primary())
	switch {
	case err == nil && current.Fingerprint == rec.Fingerprint:
		return "unchanged", nil
	case err == nil && current.NotAfter.After(rec.NotAfter) && !force:
		return "kept", nil // the stored one lasts longer
	case err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrCorrupt):
		return "", err
	}
	if err := st.PutCert(ctx, rec); err != nil {
		return "", err
	}
	return "imported", nil
}

// hasPEM reports whether data holds a PEM block of a type that want accepts.
func hasPEM(data []byte, want func(blockType string) bool) bool {
	for {
		var block *pem.Block
		if block, data = pem.Decode(data); block == nil {
			return false
		}
		if want(block.Type) {
			return true
		}
	}
}

// pkcs8 encodes key as the schema wants it and names its type.
func pkcs8(key crypto.PrivateKey) ([]byte, string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, "", fmt.Errorf("encoding the private key: %w", err)
	}
	keyType := ""
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		keyType = map[int]string{256: "ec256", 384: "ec384"}[k.Curve.Params().BitSize]
	case *rsa.PrivateKey:
		keyType = map[int]string{2048: "rsa2048", 4096: "rsa4096"}[k.N.BitLen()]
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), keyType, nil
}

func without(list []string, s string) []string {
	var out []string
	for _, v := range list {
		if v != s {
			out = append(out, v)
		}
	}
	return out
}
