package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// joinMetaKey marks a token as a join token and names the SPIFFE ID it
// enrolls. Join tokens carry no policy: they cannot call anything but
// Enroll.
const joinMetaKey = "join_spiffe_id"

// defaultJoinTTL is a join token's lifetime unless asked otherwise.
const defaultJoinTTL = 10 * time.Minute

type identityService struct {
	sigilv1.UnimplementedIdentityServiceServer
	s *Server
}

// validSPIFFEID parses id by the SPIFFE ID rules, as the CA does when it
// issues the SVID (ca/names.go), so a join token never names an ID that
// Enroll would then refuse.
func validSPIFFEID(id string) error {
	if _, err := spiffeid.FromString(id); err != nil {
		return status.Errorf(codes.InvalidArgument, "spiffe_id %q: must be spiffe://TRUST-DOMAIN/PATH: %v", id, err)
	}
	return nil
}

func (h identityService) CreateJoinToken(ctx context.Context, req *sigilv1.CreateJoinTokenRequest) (*sigilv1.CreateJoinTokenResponse, error) {
	if req.GetTtlSeconds() < 0 {
		return nil, status.Error(codes.InvalidArgument, "ttl_seconds must not be negative")
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	if ttl == 0 {
		ttl = defaultJoinTTL
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	to, err := h.s.core.Destination(ctx, recipientRef(req.GetRecipient()), 0)
	if err != nil {
		return nil, err
	}
	tok, rec, err := a.Tokens.Create(ctx, auth.CreateOptions{TTL: ttl, Uses: 1, Meta: map[string]string{auth.PurposeMeta: "join", joinMetaKey: req.GetSpiffeId()}})
	if err != nil {
		return nil, h.s.grpcError("create join token", err)
	}
	d, err := h.s.core.Deliver(ctx, to, core.Secret{BindingID: "join:" + req.GetSpiffeId(), Data: map[string]string{"token": tok}},
		func(ctx context.Context) error { return a.Tokens.Delete(ctx, rec.ID) })
	if err != nil {
		return nil, err
	}
	return &sigilv1.CreateJoinTokenResponse{Envelope: d.Envelope, ExpiresAtUnix: rec.ExpiresAt.Unix()}, nil
}

func (h identityService) Enroll(ctx context.Context, req *sigilv1.EnrollRequest) (*sigilv1.EnrollResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if len(req.GetCsr()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "csr is required")
	}
	// Verifying spends the token's single use, so a second enrollment with
	// it fails whatever happens next.
	id, err := a.Tokens.VerifyPurpose(ctx, strings.TrimSpace(req.GetJoinToken()), "join")
	if errors.Is(err, auth.ErrInvalidToken) || errors.Is(err, auth.ErrWrongPurpose) {
		return nil, status.Error(codes.Unauthenticated, "invalid, expired or already used join token")
	}
	if err != nil {
		return nil, h.s.grpcError("verify join token", err)
	}
	spiffeID := id.Meta[joinMetaKey]
	if spiffeID == "" {
		return nil, status.Error(codes.PermissionDenied, "not a join token")
	}
	issued, err := a.CA.Sign(ctx, ca.SignRequest{CSR: req.GetCsr(), Profile: "workload", Requester: "join:" + spiffeID,
		Authorize: func(n ca.Names) error {
			names := n.All()
			if len(names) != 1 || names[0] != spiffeID {
				return status.Errorf(codes.PermissionDenied, "this join token enrolls %s only, not %v", spiffeID, names)
			}
			return nil
		}})
	if err != nil {
		return nil, h.s.grpcError("enroll", err)
	}
	var chain [][]byte
	for _, c := range issued.Chain {
		chain = append(chain, c.Raw)
	}
	return &sigilv1.EnrollResponse{CertificatePem: pemBundle(issued.Certificate.Raw), ChainPem: pemBundle(chain...),
		Serial: issued.Record.Serial, NotAfterUnix: issued.Certificate.NotAfter.Unix()}, nil
}
