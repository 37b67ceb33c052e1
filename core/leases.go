package core

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/storage"
)

// CredsRequest asks for credentials from MOUNT/creds/ROLE. WrapTTLSeconds
// is bounded by TokenMaxTTL: a wrapping token is a token.
type CredsRequest struct {
	Mount, Role                string
	TTLSeconds, WrapTTLSeconds int64
	Recipient                  *RecipientRef
}

// Creds is minted credentials: the lease, what may be shown in clear, and
// the secret's delivery.
type Creds struct {
	Lease        *lease.Lease
	LeaseSeconds int64
	Public       map[string]string
	Delivery     *Delivery
}

// MintCreds mints credentials under a lease owned by the caller and
// delivers them. The recipient is resolved first: credentials nobody can
// receive are never minted; a failed delivery revokes the lease.
func (c *Core) MintCreds(ctx context.Context, caller *Caller, req CredsRequest) (*Creds, error) {
	if err := c.limit(caller); err != nil {
		return nil, err
	}
	ttl, err := Seconds("ttl_seconds", req.TTLSeconds, 0, "")
	if err != nil {
		return nil, err
	}
	wrapTTL, err := Seconds("wrap_ttl_seconds", req.WrapTTLSeconds, c.TokenMaxTTL(), "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	to, err := c.Destination(ctx, req.Recipient, wrapTTL)
	if err != nil {
		return nil, err
	}
	minted, err := u.Leases.Mint(ctx, lease.MintRequest{Mount: req.Mount, Role: req.Role,
		Identity: caller.Name(), Owner: caller.Owner(), TTL: ttl})
	if err != nil {
		return nil, OpError("mint", err)
	}
	l := minted.Lease
	caller.addLease(l.ID)
	secs := int64(l.TTL(time.Now()).Round(time.Second).Seconds())
	d, err := c.Deliver(ctx, to, Secret{BindingID: l.ID, Data: minted.Data, LeaseSeconds: secs, Renewable: l.Renewable},
		func(ctx context.Context) error { return u.Leases.Revoke(ctx, l.ID) })
	if err != nil {
		return nil, err
	}
	return &Creds{Lease: l, LeaseSeconds: secs, Public: minted.Public, Delivery: d}, nil
}

// ListLeases returns a page of leases under prefix and the next page's
// token.
func (c *Core) ListLeases(ctx context.Context, opts lease.ListOptions) ([]*lease.Lease, string, error) {
	if opts.Limit < 0 || opts.Limit > 1000 {
		return nil, "", invalid("page_size must be between 0 and 1000")
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, "", err
	}
	list, next, err := u.Leases.List(ctx, opts)
	return list, next, OpError("list leases", err)
}

// The administrative path of each lease operation is sys/leases/OP/ID,
// which (like every sys path) needs sudo.
const (
	leaseOpLookup = "lookup"
	leaseOpRenew  = "renew"
	leaseOpRevoke = "revoke"
)

// leaseAccess decides whether caller may perform op (capability cp) on
// lease id, and records the deciding path and reason for the audit. It
// returns the lease when it had to read it (nil otherwise).
//
//   - A lease of the auth mount is an API token: it needs cp on
//     sys/tokens/TOKEN_ID (with sudo), exactly as `sigil token` does, and
//     is never reachable through leases/ grants.
//   - A caller granted cp with sudo on sys/leases/OP/ID may act on any lease.
//   - Anyone else needs cp on leases/ID and must be the lease's owner: the
//     identity that minted it. A lease without a recorded owner (minted
//     before owners were recorded) is administrators' only.
func (c *Core) leaseAccess(ctx context.Context, u *Unsealed, caller *Caller, op, id string, cp policy.Capability) (*lease.Lease, error) {
	if id == "" {
		return nil, invalid("a lease id is required")
	}
	if tid, ok := auth.TokenOfLease(id); ok {
		if tid == "" {
			return nil, caller.Deny("sys/tokens", fmt.Sprintf("lease %s is under the internal auth mount: API token leases are managed only through sys/tokens (sigil token)", id))
		}
		if err := caller.Authorize("sys/tokens/"+tid, cp); err != nil {
			return nil, errs.New(errs.PermissionDenied, fmt.Sprintf("%s: lease %s is an API token, managed only through sys/tokens (sigil token)", err, id))
		}
		return nil, nil
	}
	admin := "sys/leases/" + op + "/" + id
	if caller.Allowed(admin, cp) {
		return nil, caller.Authorize(admin, cp)
	}
	if err := caller.Authorize("leases/"+id, cp); err != nil {
		return nil, err
	}
	l, err := u.Leases.Lookup(ctx, id)
	if err != nil {
		return nil, OpError(op+" lease", err)
	}
	if l.OwnedBy(caller.Owner()) {
		return l, nil
	}
	why := "was minted by another identity"
	if l.Owner == "" {
		why = "has no recorded owner (it predates lease owners)"
	}
	return nil, caller.Deny(admin, fmt.Sprintf("lease %s %s: acting on it needs %s with sudo on %s", id, why, cp, admin))
}

// LookupLease returns lease id to its owner or an administrator.
func (c *Core) LookupLease(ctx context.Context, caller *Caller, id string) (*lease.Lease, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	l, err := c.leaseAccess(ctx, u, caller, leaseOpLookup, id, policy.Read)
	if err != nil || l != nil {
		return l, err
	}
	l, err = u.Leases.Lookup(ctx, id)
	return l, OpError("look up lease", err)
}

// RenewLease extends lease id by incSeconds, for its owner or an
// administrator.
func (c *Core) RenewLease(ctx context.Context, caller *Caller, id string, incSeconds int64) (*lease.Lease, error) {
	inc, err := Seconds("increment_seconds", incSeconds, 0, "")
	if err != nil {
		return nil, err
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	if _, err := c.leaseAccess(ctx, u, caller, leaseOpRenew, id, policy.Update); err != nil {
		return nil, err
	}
	if tid, ok := auth.TokenOfLease(id); ok && tid != "" {
		// A token's lease renews with the token, never alone.
		if _, err := c.RenewToken(ctx, caller, tid, incSeconds); err != nil {
			return nil, err
		}
		l, err := u.Leases.Lookup(ctx, id)
		return l, OpError("renew lease", err)
	}
	l, err := u.Leases.Renew(ctx, id, inc)
	return l, OpError("renew lease", err)
}

// RevokeLeases revokes one lease (id), forgets one (id with force), or
// revokes every lease under a mount or role (prefix); it returns how many
// were revoked. Exactly one of id and prefix is given.
func (c *Core) RevokeLeases(ctx context.Context, caller *Caller, id, prefix string, force bool) (int, error) {
	if (id == "") == (prefix == "") {
		return 0, invalid("give exactly one of id and prefix")
	}
	u, err := c.Unsealed()
	if err != nil {
		return 0, err
	}
	switch {
	case prefix != "":
		// A prefix names a mount or a role: "db" and "db/" both mean the
		// mount db, never a sibling such as "db2/".
		p := strings.TrimSuffix(prefix, "/")
		if err := engines.CheckPath(p); err != nil {
			return 0, invalid(fmt.Sprintf("prefix %q: name a mount or MOUNT/ROLE: %v", prefix, err))
		}
		if _, ok := auth.TokenOfLease(p); ok {
			return 0, caller.Deny("sys/tokens", fmt.Sprintf("prefix %q covers API token leases (auth/): tokens are revoked only through sys/tokens, one at a time (sigil token revoke ID)", prefix))
		}
		if err := caller.Authorize("sys/leases/revoke-prefix/"+p, policy.Update); err != nil {
			return 0, err
		}
		n, err := u.Leases.RevokePrefix(ctx, p+"/")
		return n, OpError("revoke prefix", err)
	case force:
		caller.addLease(id)
		if tid, ok := auth.TokenOfLease(id); ok {
			// Forgetting a token's lease would leave the token working.
			return 0, caller.Deny("sys/tokens", fmt.Sprintf("lease %s is an API token (token %q): revoke it through sys/tokens (sigil token revoke), never by force", id, tid))
		}
		if err := caller.Authorize("sys/leases/revoke-force/"+id, policy.Update); err != nil {
			return 0, err
		}
		return 1, OpError("force revoke", u.Leases.RevokeForce(ctx, id))
	}
	caller.addLease(id)
	if _, err := c.leaseAccess(ctx, u, caller, leaseOpRevoke, id, policy.Delete); err != nil {
		return 0, err
	}
	return 1, OpError("revoke lease", u.Leases.Revoke(ctx, id))
}

// maxIrrevocableScan bounds the irrevocable leases one count reads; they
// are kept until an operator deals with them, so there are normally few.
const maxIrrevocableScan = 100000

// LeaseCount is how many leases of a mount are active and irrevocable.
type LeaseCount struct{ Active, Irrevocable int }

// LeaseCounts counts active and irrevocable leases per mount, every mount
// included. Mount paths and lease states are stored in the clear, so this
// works while sealed.
func (c *Core) LeaseCounts(ctx context.Context) (map[string]LeaseCount, error) {
	st := c.opts.Store
	mounts, err := st.Mounts().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	out := make(map[string]LeaseCount, len(mounts))
	for _, m := range mounts {
		n, err := st.Leases().CountActive(ctx, m.Path+"/")
		if err != nil {
			return nil, fmt.Errorf("count active leases of %s: %w", m.Path, err)
		}
		out[m.Path] = LeaseCount{Active: n}
	}
	after := ""
	for scanned := 0; scanned < maxIrrevocableScan; {
		page, next, err := st.Leases().List(ctx, storage.LeaseFilter{State: storage.LeaseIrrevocable, After: after, Limit: 1000})
		if err != nil {
			return nil, fmt.Errorf("list irrevocable leases: %w", err)
		}
		for _, l := range page {
			if n, ok := out[l.Mount]; ok {
				n.Irrevocable++
				out[l.Mount] = n
			}
		}
		scanned += len(page)
		if next == "" || len(page) == 0 {
			break
		}
		after = next
	}
	return out, nil
}
