package core

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/policy"
)

// PolicyTest is what a policy test answers: the decision and why.
type PolicyTest struct {
	Allowed     bool
	Explanation string
}

// TestPolicy decides capability c on path for subject sub under the
// current policies, without acting, and explains the decision.
func (c *Core) TestPolicy(ctx context.Context, sub policy.Subject, path string, cp policy.Capability) (*PolicyTest, error) {
	if !cp.Valid() {
		return nil, invalid(fmt.Sprintf("capability %q: use read, create, update, delete, list or sudo", cp))
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	eng, err := u.Policies.Engine(ctx)
	if err != nil {
		return nil, OpError("load policies", err)
	}
	return &PolicyTest{Allowed: eng.SetFor(sub).Allowed(path, cp).Allowed, Explanation: eng.Explain(sub, path, cp).String()}, nil
}

// AuditCheck is the result of verifying the audit log: Problem and BadSeq
// are set when the chain is broken.
type AuditCheck struct {
	Report  audit.Report
	Problem string
	BadSeq  uint64
}

// VerifyAudit checks the database audit chain and its signed checkpoints.
// A broken chain is a result, not an error.
func (c *Core) VerifyAudit(ctx context.Context) (*AuditCheck, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	k, err := u.Custody.Key(ctx, AuditCheckpointKey)
	if err != nil {
		return nil, OpError("audit checkpoint key", err)
	}
	rep, err := audit.VerifyDB(ctx, c.opts.Store.Audit(), audit.VerifyOptions{PublicKey: k.Public, CheckpointEvery: AuditCheckpointEvery})
	res := &AuditCheck{Report: rep}
	var ve *audit.VerifyError
	switch {
	case errors.As(err, &ve):
		res.BadSeq, res.Problem = ve.Seq, ve.Error()
	case err != nil:
		return nil, OpError("verify audit log", err)
	}
	return res, nil
}

// ACME is the ACME server, or why there is none.
func (c *Core) ACME() (*acme.Server, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	if u.ACME == nil {
		return nil, precondition("ACME is disabled (acme.disabled in the configuration)")
	}
	return u.ACME, nil
}

// EABRequest asks for an external account binding key.
type EABRequest struct {
	Provisioner string
	Policy      acme.EABPolicy
	// TTL, when positive, sets Policy.ExpiresAt.
	TTL       time.Duration
	WrapTTL   time.Duration
	Recipient *RecipientRef
}

// NewEAB is a created EAB key: its id and the delivery of its HMAC key.
type NewEAB struct {
	Key      *acme.EABKey
	Delivery *Delivery
}

// CreateEAB makes an EAB key and delivers it; the recipient is resolved
// first, and a failed delivery revokes the key.
func (c *Core) CreateEAB(ctx context.Context, req EABRequest) (*NewEAB, error) {
	srv, err := c.ACME()
	if err != nil {
		return nil, err
	}
	if req.TTL < 0 {
		return nil, invalid("ttl_seconds must not be negative")
	}
	to, err := c.Destination(ctx, req.Recipient, req.WrapTTL)
	if err != nil {
		return nil, err
	}
	if req.TTL > 0 {
		req.Policy.ExpiresAt = time.Now().Add(req.TTL)
	}
	key, err := srv.CreateEAB(ctx, req.Provisioner, req.Policy)
	if err != nil {
		return nil, OpError("create EAB key", err)
	}
	d, err := c.Deliver(ctx, to, Secret{BindingID: key.KeyID, Data: map[string]string{"key_id": key.KeyID, "hmac_key": key.HMACKey}},
		func(ctx context.Context) error { return srv.RevokeEAB(ctx, key.KeyID) })
	if err != nil {
		return nil, err
	}
	return &NewEAB{Key: key, Delivery: d}, nil
}

// EngineInfo is a mounted engine as operators see it.
type EngineInfo struct {
	Mount, Type  string
	ActiveLeases int
}

// ListEngines lists the mounted engines with their active leases; the
// internal token mount (API tokens' leases, managed by `sigil token`) is
// left out.
func (c *Core) ListEngines(ctx context.Context) ([]EngineInfo, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	list, err := u.Mounts.List(ctx)
	if err != nil {
		return nil, OpError("list engines", err)
	}
	var out []EngineInfo
	tokenPath, tokenType := auth.LeaseMount, auth.LeaseEngineType
	for _, m := range list {
		if m.Path == tokenPath && m.Type == tokenType {
			continue
		}
		n, err := c.opts.Store.Leases().CountActive(ctx, engines.LeasePrefix(m.Path))
		if err != nil {
			return nil, OpError("count leases", err)
		}
		out = append(out, EngineInfo{Mount: m.Path, Type: m.Type, ActiveLeases: n})
	}
	return out, nil
}

// DisableEngine unmounts mount; with revokeLeases its leases are revoked
// first, otherwise a mount with leases is refused.
func (c *Core) DisableEngine(ctx context.Context, mount string, revokeLeases bool) error {
	u, err := c.Unsealed()
	if err != nil {
		return err
	}
	var revoke func(ctx context.Context, prefix string) error
	if revokeLeases {
		revoke = func(ctx context.Context, prefix string) error {
			_, err := u.Leases.RevokePrefix(ctx, prefix)
			return err
		}
	}
	return OpError("disable engine", u.Mounts.Disable(ctx, mount, revoke))
}
