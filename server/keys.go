package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/keys"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// needSSH completes "mount X is a T engine; ..." for a mount that cannot
// sign SSH certificates.
const needSSH = "ssh signing needs a keys mount"

type sshService struct {
	sigilv1.UnimplementedSSHServiceServer
	s *Server
}

func (h sshService) Sign(ctx context.Context, req *sigilv1.SSHSignRequest) (*sigilv1.SSHSignResponse, error) {
	if err := h.s.limit(ctx); err != nil {
		return nil, err
	}
	if req.GetTtlSeconds() < 0 {
		return nil, status.Error(codes.InvalidArgument, "ttl_seconds must not be negative")
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	ke, err := engines.Capability[engines.SSHSigner](ctx, a.Mounts, req.GetMount(), needSSH)
	if err != nil {
		return nil, h.s.grpcError("ssh sign", err)
	}
	role, err := a.Mounts.Role(ctx, req.GetMount(), req.GetRole())
	if err != nil {
		return nil, h.s.grpcError("ssh sign", err)
	}
	cert, err := ke.SignSSH(ctx, role, engines.SSHRequest{PublicKey: req.GetPublicKey(), Principals: req.GetPrincipals(),
		TTL: time.Duration(req.GetTtlSeconds()) * time.Second, Identity: callerFrom(ctx).Name()})
	if errors.Is(err, keys.ErrPrincipalNotAllowed) {
		return nil, status.Error(codes.PermissionDenied, "ssh sign: "+err.Error())
	}
	if err != nil {
		return nil, h.s.grpcError("ssh sign", err)
	}
	return &sigilv1.SSHSignResponse{Certificate: string(cert.Authorized), Serial: cert.Serial, KeyId: cert.KeyID,
		Principals: cert.Principals, ValidBeforeUnix: cert.ValidBefore.Unix()}, nil
}

// handleSSHCA serves GET /ssh/MOUNT/ca.pub: a keys mount's SSH CA public
// key, for sshd's TrustedUserCAKeys or known_hosts @cert-authority.
func (s *Server) handleSSHCA(w http.ResponseWriter, r *http.Request) {
	eng, mount, ok := s.publicMountEngine(w, r, "/ca.pub")
	if !ok {
		return
	}
	ke, ok := eng.(engines.SSHSigner)
	if !ok {
		http.NotFound(w, r)
		return
	}
	pub, err := ke.SSHCAPublicKey(r.Context())
	if err != nil {
		s.log.Error("SSH CA key", "mount", mount, "err", err)
		http.Error(w, "SSH CA key unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(pub)
}
