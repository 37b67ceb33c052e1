package ca

import (
	"crypto/x509"
	"encoding/base64"
)

// PEM armour of a certificate, as encoding/pem writes it.
const (
	pemBegin   = "-----BEGIN CERTIFICATE-----\n"
	pemEnd     = "-----END CERTIFICATE-----\n"
	pemLineLen = 64 // base64 characters per line
)

// pemLen is the length of der's PEM encoding.
func pemLen(der []byte) int {
	n := base64.StdEncoding.EncodedLen(len(der))
	return len(pemBegin) + n + (n+pemLineLen-1)/pemLineLen + len(pemEnd)
}

// appendPEM appends der as a CERTIFICATE block, byte for byte what
// pem.Encode writes, without its buffer growth and line-writer copies.
func appendPEM(dst, der []byte) []byte {
	dst = append(dst, pemBegin...)
	n := base64.StdEncoding.EncodedLen(len(der))
	start := len(dst)
	dst = append(dst, make([]byte, n)...)
	base64.StdEncoding.Encode(dst[start:], der)
	// Break the encoded text into lines in place, from the end backwards,
	// after making room for the newlines.
	lines := (n + pemLineLen - 1) / pemLineLen
	dst = append(dst, make([]byte, lines)...)
	src, w := start+n, len(dst)
	for l := lines - 1; l >= 0; l-- {
		from := start + l*pemLineLen
		w--
		dst[w] = '\n'
		w -= src - from
		copy(dst[w:], dst[from:src])
		src = from
	}
	return append(dst, pemEnd...)
}

// PEMCertificates is certs as concatenated PEM CERTIFICATE blocks.
func PEMCertificates(certs ...*x509.Certificate) string {
	n := 0
	for _, c := range certs {
		n += pemLen(c.Raw)
	}
	b := make([]byte, 0, n)
	for _, c := range certs {
		b = appendPEM(b, c.Raw)
	}
	return string(b)
}
