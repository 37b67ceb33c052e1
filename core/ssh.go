package core

import (
	"context"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/errs"
)

// SSHSign asks a keys mount's role for an SSH certificate.
type SSHSign struct {
	Mount, Role string
	PublicKey   []byte
	Principals  []string
	TTLSeconds  int64
}

// SignSSH signs an SSH user or host certificate under mount's role; the
// key id names the caller Sigil authenticated.
func (c *Core) SignSSH(ctx context.Context, caller *Caller, req SSHSign) (*engines.SSHCert, error) {
	if err := c.limit(caller); err != nil {
		return nil, err
	}
	if req.TTLSeconds < 0 {
		return nil, errs.New(errs.InvalidArgument, "ttl_seconds must not be negative")
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	ke, err := engines.Capability[engines.SSHSigner](ctx, u.Mounts, req.Mount, "ssh signing needs a keys mount")
	if err != nil {
		return nil, OpError("ssh sign", err)
	}
	role, err := u.Mounts.Role(ctx, req.Mount, req.Role)
	if err != nil {
		return nil, OpError("ssh sign", err)
	}
	cert, err := ke.SignSSH(ctx, role, engines.SSHRequest{PublicKey: req.PublicKey, Principals: req.Principals,
		TTL: time.Duration(req.TTLSeconds) * time.Second, Identity: caller.Name()})
	return cert, OpError("ssh sign", err)
}
