package store

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"hash/crc32"
	"strconv"
)

// DERRecordFields returns the fields a record carries beside its PEM for
// nginx (chain_der, key_der, der_crc32), none when the PEM does not convert.
// Every certificate write of the store adds them; tools that write records
// themselves (the benchmarks) call it too.
func DERRecordFields(fullChain, keyPEM string) map[string]any {
	chain, key, err := derFields(fullChain, keyPEM)
	if err != nil {
		return nil
	}
	return map[string]any{"chain_der": chain, "key_der": key, "der_crc32": derCRC(fullChain, keyPEM)}
}

// derCRC is the CRC-32 (IEEE, as nginx's ngx.crc32_long) of the PEM fields
// the DER fields were made from, in decimal (der_crc32). nginx uses the DER
// only when it matches: a record whose PEM was replaced without its DER (by
// hand, or by a tool that knows only the PEM fields) is served from its PEM,
// never from the DER of the certificate it held before.
func derCRC(fullChain, keyPEM string) string {
	return strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(fullChain+keyPEM))), 10)
}

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
