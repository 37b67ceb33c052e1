package validation

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/asn1"
	"net"
	"strings"

	"github.com/miekg/dns"
)

// ALPNProto is the TLS-ALPN-01 protocol name (RFC 8737 §6.2).
const ALPNProto = "acme-tls/1"

// OIDACMEIdentifier is id-pe-acmeIdentifier (RFC 8737 §6.1).
var oidACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// OIDACMEIdentifier returns id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31).
func OIDACMEIdentifier() asn1.ObjectIdentifier {
	return append(asn1.ObjectIdentifier(nil), oidACMEIdentifier...)
}

// validateTLSALPN01 connects with ALPN acme-tls/1 and the identifier as SNI
// (the reverse-DNS name for an IP, RFC 8738 §6) and checks the self-signed
// challenge certificate: exactly one SAN, equal to the identifier, and a
// critical id-pe-acmeIdentifier extension holding SHA-256 of the key
// authorization (RFC 8737 §3).
func (v *VA) validateTLSALPN01(ctx context.Context, req Request) error {
	sni := req.Value
	var ip net.IP
	if req.IdentifierType == IdentifierIP {
		ip = net.ParseIP(req.Value)
		rev, err := dns.ReverseAddr(ip.String())
		if err != nil {
			return fail("malformed", err, "reverse name of %s", req.Value)
		}
		sni = strings.TrimSuffix(rev, ".")
	}
	raw, err := v.dialAny(ctx, req.Value, v.cfg.TLSALPN01Port)
	if err != nil {
		return err
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	conn := tls.Client(raw, &tls.Config{
		ServerName:         sni,
		NextProtos:         []string{ALPNProto},
		InsecureSkipVerify: true, //nolint:gosec // the certificate is self-signed by design; checked below
		MinVersion:         tls.VersionTLS12,
	})
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail("tls", err, "TLS handshake with %s", req.Value)
	}
	st := conn.ConnectionState()
	if st.NegotiatedProtocol != ALPNProto {
		return fail("unauthorized", nil, "%s did not negotiate ALPN %q", req.Value, ALPNProto)
	}
	if len(st.PeerCertificates) == 0 {
		return fail("unauthorized", nil, "%s presented no certificate", req.Value)
	}
	leaf := st.PeerCertificates[0]
	nSAN := len(leaf.DNSNames) + len(leaf.IPAddresses) + len(leaf.URIs) + len(leaf.EmailAddresses)
	if nSAN != 1 {
		return fail("unauthorized", nil, "challenge certificate has %d subject alternative names, want exactly 1", nSAN)
	}
	switch {
	case ip != nil:
		if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(ip) {
			return fail("unauthorized", nil, "challenge certificate does not name %s", req.Value)
		}
	default:
		if len(leaf.DNSNames) != 1 || !strings.EqualFold(leaf.DNSNames[0], req.Value) {
			return fail("unauthorized", nil, "challenge certificate does not name %s", req.Value)
		}
	}
	want := sha256.Sum256([]byte(req.KeyAuthorization))
	for _, ext := range leaf.Extensions {
		if !ext.Id.Equal(oidACMEIdentifier) {
			continue
		}
		if !ext.Critical {
			return fail("unauthorized", nil, "acmeIdentifier extension is not critical")
		}
		var got []byte
		rest, err := asn1.Unmarshal(ext.Value, &got)
		if err != nil || len(rest) != 0 {
			return fail("unauthorized", err, "malformed acmeIdentifier extension")
		}
		if len(got) != len(want) || subtle.ConstantTimeCompare(got, want[:]) != 1 {
			return fail("incorrectResponse", nil, "acmeIdentifier extension does not match the key authorization")
		}
		return nil
	}
	return fail("unauthorized", nil, "challenge certificate lacks the acmeIdentifier extension")
}
