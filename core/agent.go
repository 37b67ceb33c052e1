package core

// Node agents (`sigil agent`): registration entries for operators, and
// node-scoped issuance for agents. An agent is a caller authenticated by
// its node SVID; which entries it may use is decided from the SPIFFE ID
// Sigil's inventory records for that certificate, never from the request.

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/registration"
)

// AgentEntriesPath is the policy path that guards registration entries;
// an entry for spiffe://TD/PATH is AgentEntriesPath/TD/PATH.
const AgentEntriesPath = "sys/agent/entries"

// AgentEntryPath is the policy path of the entry that names spiffeID.
func AgentEntryPath(spiffeID string) (string, error) {
	if err := ValidSPIFFEID(spiffeID); err != nil {
		return "", err
	}
	return AgentEntriesPath + "/" + strings.TrimPrefix(spiffeID, "spiffe://"), nil
}

func (c *Core) entries() *registration.Store {
	return registration.NewStore(c.opts.Store.Settings(), c.opts.Config.CA.TrustDomain)
}

// registrationErr maps the registration package's errors to kinds.
func registrationErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, registration.ErrInvalid):
		return errs.Wrap(errs.InvalidArgument, "", err)
	case errors.Is(err, registration.ErrNotFound):
		return errs.Wrap(errs.NotFound, "", err)
	}
	return internalErr(op, err)
}

// CreateEntry stores a registration entry. The authorisation table has
// already checked create on the entry's AgentEntryPath.
func (c *Core) CreateEntry(ctx context.Context, e *registration.Entry) error {
	if _, err := c.Unsealed(); err != nil {
		return err
	}
	return registrationErr("create registration entry", c.entries().Create(ctx, e))
}

// ListEntries lists entries, of one parent when parent is set.
func (c *Core) ListEntries(ctx context.Context, parent string) ([]*registration.Entry, error) {
	if _, err := c.Unsealed(); err != nil {
		return nil, err
	}
	if parent != "" {
		if err := ValidSPIFFEID(parent); err != nil {
			return nil, err
		}
	}
	out, err := c.entries().List(ctx, parent)
	return out, registrationErr("list registration entries", err)
}

// DeleteEntry removes an entry; the caller needs delete on its path, which
// only the stored entry knows.
func (c *Core) DeleteEntry(ctx context.Context, caller *Caller, id string) error {
	if _, err := c.Unsealed(); err != nil {
		return err
	}
	st := c.entries()
	e, err := st.Get(ctx, id)
	if errors.Is(err, registration.ErrNotFound) {
		// Only a caller who may list entries (and so learns nothing new)
		// is told the id does not exist; anyone else is denied.
		if caller.Allowed(AgentEntriesPath, policy.List) {
			caller.AllowWithoutGrant(AgentEntriesPath, "the caller may list entries: it learns only that "+id+" does not exist")
			return errs.New(errs.NotFound, "no registration entry "+id)
		}
		return caller.Deny(AgentEntriesPath, "no registration entry "+id+" that you may delete")
	}
	if err != nil {
		return registrationErr("delete registration entry", err)
	}
	path, err := AgentEntryPath(e.SPIFFEID)
	if err != nil {
		return err
	}
	if err := caller.Authorize(path, policy.Delete); err != nil {
		return err
	}
	return registrationErr("delete registration entry", st.Delete(ctx, e))
}

// agentNode is the node a caller is: the SPIFFE ID of the SVID it
// authenticated with. A token caller is no node.
func agentNode(caller *Caller) string {
	if caller == nil || caller.Identity == nil || caller.Identity.TokenID != "" {
		return ""
	}
	return caller.Identity.SPIFFEID
}

// nodePath is the audit path of a node's agent calls.
func nodePath(node string) string {
	return "sys/agent/nodes/" + strings.TrimPrefix(node, "spiffe://")
}

func (c *Core) requireNode(caller *Caller) (string, error) {
	node := agentNode(caller)
	if node == "" {
		return "", caller.Deny("sys/agent/nodes", "agent calls need a node SVID (mTLS), not a token")
	}
	return node, nil
}

// nodeEntry returns the entry id of the caller's node, or a denial that
// does not say whether the id exists under another node.
func (c *Core) nodeEntry(ctx context.Context, caller *Caller, id string) (*registration.Entry, error) {
	node, err := c.requireNode(caller)
	if err != nil {
		return nil, err
	}
	if err := registration.ValidID(id); err != nil {
		return nil, errs.Wrap(errs.InvalidArgument, "", err)
	}
	e, err := c.entries().GetForParent(ctx, node, id)
	if errors.Is(err, registration.ErrNotFound) {
		return nil, caller.Deny(nodePath(node), fmt.Sprintf("registration entry %s is not parented to %s", id, node))
	}
	if err != nil {
		return nil, registrationErr("read registration entry", err)
	}
	caller.AllowWithoutGrant(nodePath(node), "the entry is parented to the calling node "+node)
	return e, nil
}

// AgentEntries returns the entries parented to the calling node.
func (c *Core) AgentEntries(ctx context.Context, caller *Caller) ([]*registration.Entry, error) {
	if _, err := c.Unsealed(); err != nil {
		return nil, err
	}
	node, err := c.requireNode(caller)
	if err != nil {
		return nil, err
	}
	caller.AllowWithoutGrant(nodePath(node), "a node reads its own registration entries")
	out, err := c.entries().List(ctx, node)
	return out, registrationErr("list registration entries", err)
}

// MintEntrySVID issues the X.509-SVID of one of the calling node's
// entries: the CSR may name the entry's SPIFFE ID only.
func (c *Core) MintEntrySVID(ctx context.Context, caller *Caller, entryID string, csr []byte) (*ca.Issued, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	e, err := c.nodeEntry(ctx, caller, entryID)
	if err != nil {
		return nil, err
	}
	if err := c.limit(caller); err != nil {
		return nil, err
	}
	if len(csr) == 0 {
		return nil, invalid("csr is required")
	}
	issued, err := u.CA.Sign(ctx, ca.SignRequest{CSR: csr, Profile: WorkloadProfile, TTL: e.TTL,
		Requester: requesterAgent + e.ParentID, Authorize: func(n ca.Names) error {
			if names := n.All(); !slices.Equal(names, []string{e.SPIFFEID}) {
				return errs.New(errs.PermissionDenied, fmt.Sprintf("entry %s is for %s only, not %v", e.ID, e.SPIFFEID, names))
			}
			return nil
		}})
	return issued, OpError("mint entry SVID", err)
}

// MintEntryJWT signs a JWT-SVID for one of the calling node's entries and
// delivers it sealed to ref: a JWT-SVID is a bearer credential, so it
// leaves only through Deliver, like every other secret.
func (c *Core) MintEntryJWT(ctx context.Context, caller *Caller, entryID string, audience []string, ref *RecipientRef) (*Delivery, time.Time, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, time.Time{}, err
	}
	e, err := c.nodeEntry(ctx, caller, entryID)
	if err != nil {
		return nil, time.Time{}, err
	}
	if err := c.limit(caller); err != nil {
		return nil, time.Time{}, err
	}
	if len(audience) == 0 || slices.Contains(audience, "") {
		return nil, time.Time{}, invalid("audience is required and must not be empty")
	}
	// Resolved before signing: a bad recipient leaves no token behind.
	to, err := c.Destination(ctx, ref, 0)
	if err != nil {
		return nil, time.Time{}, err
	}
	tok, exp, err := u.JWTSVIDs.Sign(ctx, e.SPIFFEID, audience, 0, time.Now())
	if err != nil {
		return nil, time.Time{}, registrationErr("sign JWT-SVID", err)
	}
	d, err := c.Deliver(ctx, to, Secret{BindingID: registration.JWTSVIDBinding(e.ID), Data: map[string]string{"token": tok}}, nil)
	if err != nil {
		return nil, time.Time{}, err
	}
	return d, exp, nil
}

// AgentBundle is the trust domain's bundle: its root certificates (PEM)
// and the JWT-SVID key set.
type AgentBundle struct {
	TrustDomain string
	RootsPEM    []byte
	JWKS        []byte
}

// Bundle returns the trust bundle agents serve to workloads.
func (c *Core) Bundle(ctx context.Context) (*AgentBundle, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	b := &AgentBundle{TrustDomain: c.opts.Config.CA.TrustDomain}
	for _, is := range u.CA.Issuers() {
		if is.Kind == ca.KindRoot {
			b.RootsPEM = append(b.RootsPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.Certificate.Raw})...)
		}
	}
	if b.JWKS, err = u.JWTSVIDs.JWKS(ctx, time.Now()); err != nil {
		return nil, registrationErr("JWT-SVID keys", err)
	}
	return b, nil
}

// RotateJWTKey makes a new JWT-SVID key active now (the authorization table
// required update on sys/agent/jwt-key); with retirePrevious the older keys
// leave the key set at once.
func (c *Core) RotateJWTKey(ctx context.Context, retirePrevious bool) ([]registration.JWTKeyInfo, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	keys, err := u.JWTSVIDs.Rotate(ctx, time.Now(), retirePrevious)
	if err != nil {
		return nil, registrationErr("rotate JWT-SVID key", err)
	}
	c.log.InfoContext(ctx, "agent: JWT-SVID key rotated", "active", keys[len(keys)-1].KID, "retire_previous", retirePrevious, "published", len(keys))
	return keys, nil
}
