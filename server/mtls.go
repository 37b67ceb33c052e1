package server

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/storage"
)

// peerChain returns the client certificates the caller presented, if any.
// The listeners request but do not require them (tokens work too), and do
// not verify them in the TLS layer: the CA's roots can change while the
// server runs (ca init, rotation), so verifyWorkload checks them against
// the current hierarchy.
func peerChain(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return ti.State.PeerCertificates
}

// verifyWorkload authenticates a workload by its X.509-SVID: the chain must
// verify to Sigil's root for client auth, carry exactly one SPIFFE ID, be
// in the inventory and not revoked.
func (s *Server) verifyWorkload(ctx context.Context, a *core.Unsealed, chain []*x509.Certificate) (*auth.Identity, error) {
	leaf := chain[0]
	roots := x509.NewCertPool()
	for _, is := range a.CA.Issuers() {
		if is.Kind == ca.KindRoot {
			roots.AddCert(is.Certificate)
		}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, is := range a.CA.Issuers() {
		if is.Kind == ca.KindIntermediate {
			inter.AddCert(is.Certificate)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, status.Error(codes.Unauthenticated, "client certificate not accepted: "+err.Error())
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return nil, status.Error(codes.Unauthenticated, "client certificate carries no single SPIFFE ID")
	}
	rec, err := a.CA.Get(ctx, leaf.SerialNumber.Text(16))
	if errors.Is(err, storage.ErrNotFound) || ca.KindOf(err) == ca.KindNotFound {
		return nil, status.Error(codes.Unauthenticated, "client certificate is not in Sigil's inventory")
	}
	if err != nil {
		return nil, s.grpcError("check client certificate", err)
	}
	if rec.Status == storage.CertRevoked {
		return nil, status.Error(codes.Unauthenticated, "client certificate is revoked")
	}
	id := leaf.URIs[0].String()
	return &auth.Identity{Name: id, SPIFFEID: id}, nil
}
