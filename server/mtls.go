package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

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

// verifyWorkload authenticates a workload by its X.509-SVID (auth does the
// checking; see auth.SVIDVerifier).
func (s *Server) verifyWorkload(ctx context.Context, a *core.Unsealed, chain []*x509.Certificate) (*auth.Identity, error) {
	v, err := auth.NewSVIDVerifier(s.cfg.CA.TrustDomain, caSVIDInventory{a.CA})
	if err != nil {
		return nil, s.grpcError("workload authentication", err)
	}
	id, err := v.Authenticate(ctx, chain)
	if errors.Is(err, auth.ErrSVIDRejected) {
		s.log.Warn("workload authentication refused", "reason", err.Error())
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	if err != nil {
		return nil, s.grpcError("check client certificate", err)
	}
	return id, nil
}

// caSVIDInventory adapts the CA to what workload authentication needs.
type caSVIDInventory struct{ a *ca.Authority }

func (c caSVIDInventory) SVIDIssuers() []auth.SVIDIssuer {
	list := c.a.Issuers()
	out := make([]auth.SVIDIssuer, 0, len(list))
	for _, is := range list {
		out = append(out, auth.SVIDIssuer{ID: is.ID, Root: is.Kind == ca.KindRoot, Certificate: is.Certificate})
	}
	return out
}

func (c caSVIDInventory) Certificate(ctx context.Context, serial string) (*storage.Certificate, error) {
	rec, err := c.a.Get(ctx, serial)
	// A serial the inventory cannot even hold (negative, too long) is as
	// absent as an unknown one.
	if k := ca.KindOf(err); k == ca.KindNotFound || k == ca.KindBadRequest {
		return nil, fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	return rec, err
}

func (c caSVIDInventory) IsWorkloadProfile(name string) bool {
	p, ok := c.a.Profile(name)
	return ok && p.SPIFFE
}
