package store

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
)

// derFields returns the record's chain and key as DER, the form nginx parses
// fastest (docs/redis-schema.md, chain_der and key_der): the chain's
// certificates concatenated, leaf first, and the key as PKCS #8. Every
// certificate write goes through CertRecord.fields, so every writer (issue,
// renew, import, peer sync, repair) stores them. PEM that does not convert
// gives none, and nginx reads the PEM fields instead.
func derFields(fullChain, keyPEM string) (chain, key []byte, err error) {
	rest := []byte(fullChain)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes...)
		}
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("fullchain: no certificate")
	}
	block, _ := pem.Decode([]byte(keyPEM))
	if block == nil {
		return nil, nil, errors.New("key: no PEM block")
	}
	switch block.Type {
	case "PRIVATE KEY":
		if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
			return nil, nil, err
		}
		return chain, block.Bytes, nil
	case "EC PRIVATE KEY", "RSA PRIVATE KEY":
		var parsed any
		if block.Type == "EC PRIVATE KEY" {
			parsed, err = x509.ParseECPrivateKey(block.Bytes)
		} else {
			parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, nil, err
		}
		key, err = x509.MarshalPKCS8PrivateKey(parsed)
		return chain, key, err
	}
	return nil, nil, errors.New("key: PEM block " + block.Type)
}
