package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"
)

// TestPEMCertificatesMatchesEncodingPEM: the encoder writes exactly what
// encoding/pem writes, for DER lengths on and off line boundaries (48 bytes
// make one 64-character line) and for several blocks.
func TestPEMCertificatesMatchesEncodingPEM(t *testing.T) {
	var certs []*x509.Certificate
	var want bytes.Buffer
	for _, n := range []int{0, 1, 2, 3, 47, 48, 49, 95, 96, 97, 500, 1023, 1024, 1500} {
		der := make([]byte, n)
		rand.Read(der)
		c := &x509.Certificate{Raw: der}
		one := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		if got := PEMCertificates(c); got != one {
			t.Fatalf("%d bytes:\n got %q\nwant %q", n, got, one)
		}
		if pemLen(der) != len(one) {
			t.Fatalf("%d bytes: pemLen %d, encoded %d", n, pemLen(der), len(one))
		}
		certs = append(certs, c)
		want.WriteString(one)
	}
	if got := PEMCertificates(certs...); got != want.String() {
		t.Fatal("several blocks differ from encoding/pem")
	}
	if got := PEMCertificates(); got != "" {
		t.Fatalf("no certificates: %q", got)
	}
}
