package ra

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// sealKindEAB is the barrier kind EAB HMAC keys are sealed under.
const sealKindEAB = "acme-eab"

// EAB key states (the storage status of an eab object).
const (
	eabUsed    = "used"
	eabRevoked = "revoked"
)

// EABPolicy constrains an External Account Binding key.
type EABPolicy struct {
	// Description is free text for operators (e.g. who the key is for).
	Description string `json:"description,omitempty"`
	// ExpiresAt, when set, is when the unused key stops being accepted.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// DNSSuffixes, when set, narrows the identifiers the bound account may
	// order to these domains and their subdomains (within the
	// provisioner's own limits).
	DNSSuffixes []string `json:"dnsSuffixes,omitempty"`
}

// EABKey is a created key: KeyID and HMACKey (base64url, as ACME clients
// take it) are shown once; Sigil keeps the HMAC key only sealed.
type EABKey struct {
	KeyID       string
	HMACKey     string
	Provisioner string
	Policy      EABPolicy
}

// EABInfo describes a stored key (never its secret).
type EABInfo struct {
	KeyID       string
	Provisioner string
	Status      string // valid, used or revoked
	Policy      EABPolicy
	AccountID   string // bound account, once used
	CreatedAt   time.Time
	BoundAt     time.Time
}

// AccountInfo describes an account for operators.
type AccountInfo struct {
	ID            string
	Provisioner   string
	Status        string
	Contact       []string
	EABKeyID      string
	KeyThumbprint string
	CreatedAt     time.Time
}

// ErrNotFound is returned by the management methods for unknown ids.
var ErrNotFound = errors.New("acme: not found")

// CreateEAB creates an External Account Binding key for a provisioner
// ("" is the default provisioner).
func (ra *RA) CreateEAB(ctx context.Context, provisioner string, policy EABPolicy) (*EABKey, error) {
	p, err := ra.Provisioner(provisioner)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("acme: eab key: %w", err)
	}
	defer clear(secret)
	id := newID()
	sealed, err := ra.sealer.Seal(ctx, sealKindEAB, id, secret)
	if err != nil {
		return nil, fmt.Errorf("acme: sealing eab key: %w", err)
	}
	k := &eabKey{KeyID: id, SealedHMAC: sealed, Policy: policy, CreatedAt: ra.now()}
	data, err := encode(k)
	if err != nil {
		return nil, err
	}
	if err := ra.store.ACME().Put(ctx, &storage.ACMEObject{Kind: kindEAB, ID: id, Provisioner: p.Name,
		Status: StatusValid, ExpiresAt: policy.ExpiresAt, Data: data}); err != nil {
		return nil, fmt.Errorf("acme: storing eab key: %w", err)
	}
	ra.logger.InfoContext(ctx, "acme: eab key created", "provisioner", p.Name, "kid", id)
	return &EABKey{KeyID: id, HMACKey: base64.RawURLEncoding.EncodeToString(secret), Provisioner: p.Name, Policy: policy}, nil
}

// ListEAB lists a provisioner's keys ("" lists every provisioner's).
func (ra *RA) ListEAB(ctx context.Context, provisioner string) ([]EABInfo, error) {
	objs, err := ra.listAll(ctx, storage.ACMEFilter{Kind: kindEAB, Provisioner: provisioner})
	if err != nil {
		return nil, err
	}
	out := make([]EABInfo, 0, len(objs))
	for _, o := range objs {
		k, err := decode[eabKey](o)
		if err != nil {
			return nil, err
		}
		out = append(out, EABInfo{KeyID: o.ID, Provisioner: o.Provisioner, Status: o.Status, Policy: k.Policy,
			AccountID: k.AccountID, CreatedAt: k.CreatedAt, BoundAt: k.BoundAt})
	}
	return out, nil
}

// RevokeEAB makes an unused key unusable (a used key stays recorded as
// used; deactivate its account instead).
func (ra *RA) RevokeEAB(ctx context.Context, keyID string) error {
	for range 5 {
		o, err := ra.store.ACME().Get(ctx, kindEAB, keyID)
		if errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("%w: eab key %q", ErrNotFound, keyID)
		}
		if err != nil {
			return fmt.Errorf("acme: revoke eab: %w", err)
		}
		if o.Status != StatusValid {
			return fmt.Errorf("acme: eab key %q is %s", keyID, o.Status)
		}
		o.Status = eabRevoked
		err = ra.store.ACME().Update(ctx, o)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("acme: revoke eab: %w", err)
		}
		return nil
	}
	return fmt.Errorf("acme: revoke eab %q: %w", keyID, storage.ErrConflict)
}

// ListAccounts lists a provisioner's accounts ("" lists all).
func (ra *RA) ListAccounts(ctx context.Context, provisioner string) ([]AccountInfo, error) {
	objs, err := ra.listAll(ctx, storage.ACMEFilter{Kind: kindAccount, Provisioner: provisioner})
	if err != nil {
		return nil, err
	}
	out := make([]AccountInfo, 0, len(objs))
	for _, o := range objs {
		a, err := decode[Account](o)
		if err != nil {
			return nil, err
		}
		out = append(out, AccountInfo{ID: a.ID, Provisioner: o.Provisioner, Status: a.Status, Contact: a.Contact,
			EABKeyID: a.EABKeyID, KeyThumbprint: o.LookupKey, CreatedAt: a.CreatedAt})
	}
	return out, nil
}

// DeactivateAccount deactivates an account: it can no longer sign requests.
func (ra *RA) DeactivateAccount(ctx context.Context, id string) error {
	for range 5 {
		o, err := ra.store.ACME().Get(ctx, kindAccount, id)
		if errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("%w: account %q", ErrNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("acme: deactivate account: %w", err)
		}
		a, err := decode[Account](o)
		if err != nil {
			return err
		}
		if a.Status == StatusDeactivated {
			return nil
		}
		a.Status = StatusDeactivated
		if o.Data, err = encode(a); err != nil {
			return err
		}
		o.Status = a.Status
		err = ra.store.ACME().Update(ctx, o)
		ra.accountWritten(id)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("acme: deactivate account: %w", err)
		}
		ra.logger.InfoContext(ctx, "acme: account deactivated by operator", "account", id)
		return nil
	}
	return fmt.Errorf("acme: deactivate account %q: %w", id, storage.ErrConflict)
}

func (ra *RA) listAll(ctx context.Context, f storage.ACMEFilter) ([]*storage.ACMEObject, error) {
	var out []*storage.ACMEObject
	f.Limit = 1000
	for {
		page, err := ra.store.ACME().List(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("acme: list %s: %w", f.Kind, err)
		}
		out = append(out, page...)
		if len(page) < f.Limit {
			return out, nil
		}
		f.After = page[len(page)-1].ID
	}
}

// PruneBatch is how many rows Prune deletes per statement.
const PruneBatch = 500

// Prune deletes expired nonces, orders, authorizations and issued-certificate
// records (past their certificate's expiry) in batches of
// PruneBatch, keeping valid objects for grace after they expire. It returns
// how many rows it deleted; call it periodically.
func (ra *RA) Prune(ctx context.Context, grace time.Duration) (int, error) {
	total := 0
	now := ra.cfg.Now()
	step := func(fn func() (int, error)) error {
		for {
			n, err := fn()
			total += n
			if err != nil || n < PruneBatch {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	st := ra.store.ACME()
	if err := step(func() (int, error) { return st.PruneNonces(ctx, now, PruneBatch) }); err != nil {
		return total, fmt.Errorf("acme: prune nonces: %w", err)
	}
	for _, kind := range []string{kindOrder, kindAuthz, kindCert} {
		if err := step(func() (int, error) { return st.PruneExpired(ctx, kind, now.Add(-grace), PruneBatch) }); err != nil {
			return total, fmt.Errorf("acme: prune %s: %w", kind, err)
		}
	}
	return total, nil
}
