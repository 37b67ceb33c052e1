package server

import (
	"context"
	"net/http"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type sshService struct {
	sigilv1.UnimplementedSSHServiceServer
	s *Server
}

func (h sshService) Sign(ctx context.Context, req *sigilv1.SSHSignRequest) (*sigilv1.SSHSignResponse, error) {
	cert, err := h.s.core.SignSSH(ctx, callerFrom(ctx), core.SSHSign{Mount: req.GetMount(), Role: req.GetRole(),
		PublicKey: req.GetPublicKey(), Principals: req.GetPrincipals(), TTLSeconds: req.GetTtlSeconds()})
	if err != nil {
		return nil, err
	}
	return &sigilv1.SSHSignResponse{Certificate: string(cert.Authorized), Serial: cert.Serial, KeyId: cert.KeyID,
		Principals: cert.Principals, ValidBeforeUnix: cert.ValidBefore.Unix()}, nil
}

// handleSSHCA serves GET /ssh/MOUNT/ca.pub: a keys mount's SSH CA public
// key, for sshd's TrustedUserCAKeys or known_hosts @cert-authority.
func (s *Server) handleSSHCA() http.HandlerFunc {
	return publicDocument(s, "/ca.pub", "text/plain; charset=utf-8", "",
		func(ctx context.Context, e engines.SSHSigner) ([]byte, error) { return e.SSHCAPublicKey(ctx) })
}
