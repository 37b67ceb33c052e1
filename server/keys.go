package server

import (
	"context"

	"github.com/sigil-ca/sigil/core"
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
