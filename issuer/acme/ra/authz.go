package ra

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// Authorization returns an authorization of the account with its status
// as of now, restarting a validation a stopped node left processing.
func (ra *RA) Authorization(ctx context.Context, acct *Account, id string) (*Authorization, error) {
	az, o, err := ra.loadAuthz(ctx, acct, id)
	if err != nil {
		return nil, err
	}
	ra.resumeStale(ctx, acct, az, o)
	return ra.authzOut(az), nil
}

// DeactivateAuthorization deactivates a pending or valid authorization
// (RFC 8555 §7.5.2).
func (ra *RA) DeactivateAuthorization(ctx context.Context, acct *Account, id string) (*Authorization, error) {
	az, o, err := ra.loadAuthz(ctx, acct, id)
	if err != nil {
		return nil, err
	}
	ra.resumeStale(ctx, acct, az, o)
	if az.Status != StatusPending && az.Status != StatusValid {
		return nil, malformed("authorization is %s", az.Status)
	}
	az.Status = StatusDeactivated
	if err := ra.saveAuthz(ctx, az, o); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return nil, conflict("the authorization changed concurrently; retry")
		}
		return nil, internal(err, "saving authorization")
	}
	return ra.authzOut(az), nil
}

// authzOut is az with its status as of now (a stored pending or valid
// authorization past its expiry is expired).
func (ra *RA) authzOut(az *Authorization) *Authorization {
	cp := *az
	cp.Status = authzStatus(az.Status, az.Expires, ra.cfg.Now())
	return &cp
}

func (ra *RA) loadAuthz(ctx context.Context, acct *Account, id string) (*Authorization, *storage.ACMEObject, error) {
	o, err := ra.store.ACME().Get(ctx, kindAuthz, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (o.Provisioner != acct.prov || o.AccountID != acct.ID)) {
		return nil, nil, notFound("no authorization %q for this account", id)
	}
	if err != nil {
		return nil, nil, internal(err, "loading authorization")
	}
	az, err := decode[Authorization](o)
	if err != nil {
		return nil, nil, internal(err, "decoding authorization")
	}
	return az, o, nil
}

func (ra *RA) saveAuthz(ctx context.Context, az *Authorization, o *storage.ACMEObject) error {
	data, err := encode(az)
	if err != nil {
		return err
	}
	o.Data, o.Status, o.ExpiresAt = data, az.Status, az.Expires
	return ra.store.ACME().Update(ctx, o)
}

// Challenge returns one challenge of an authorization of the account.
func (ra *RA) Challenge(ctx context.Context, acct *Account, authzID, typ string) (*Authorization, *Challenge, error) {
	az, _, err := ra.loadAuthz(ctx, acct, authzID)
	if err != nil {
		return nil, nil, err
	}
	i := slices.IndexFunc(az.Challenges, func(c *Challenge) bool { return c.Type == typ })
	if i < 0 {
		return nil, nil, notFound("no %s challenge in authorization %s", typ, authzID)
	}
	return az, az.Challenges[i], nil
}

// StartValidation answers a client's "ready" on a challenge (RFC 8555
// §7.5.1): a pending challenge of a pending authorization, with no other
// challenge under way, moves to processing and is validated in the
// background. With Config.ValidationWait it waits that long for the
// outcome. It returns the authorization and challenge as they stand.
func (ra *RA) StartValidation(ctx context.Context, acct *Account, authzID, typ string) (*Authorization, *Challenge, error) {
	az, o, err := ra.loadAuthz(ctx, acct, authzID)
	if err != nil {
		return nil, nil, err
	}
	i := slices.IndexFunc(az.Challenges, func(c *Challenge) bool { return c.Type == typ })
	if i < 0 {
		return nil, nil, notFound("no %s challenge in authorization %s", typ, authzID)
	}
	c := az.Challenges[i]
	status := authzStatus(az.Status, az.Expires, ra.cfg.Now())
	busy := slices.ContainsFunc(az.Challenges, func(c *Challenge) bool { return c.Status != StatusPending })
	switch {
	case status == StatusPending && c.Status == StatusPending && !busy:
	case status != StatusPending && c.Status == StatusPending:
		return nil, nil, malformed("authorization is %s", status)
	default:
		return az, c, nil // under way or done: report it
	}
	now := ra.now()
	c.Status, c.Started = StatusProcessing, &now
	if err := ra.saveAuthz(ctx, az, o); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return nil, nil, conflict("the authorization changed concurrently; retry")
		}
		return nil, nil, internal(err, "saving challenge")
	}
	done := ra.startValidation(az, c, c.Token+"."+acct.Thumbprint())
	if ra.cfg.ValidationWait > 0 {
		// Give a quick validation the chance to finish, so the client
		// sees its outcome without polling; never longer than the bound.
		t := time.NewTimer(ra.cfg.ValidationWait)
		select {
		case naz := <-done:
			// The outcome as this validation recorded it; read back only
			// if it recorded none (another had).
			if naz == nil {
				naz, _, _ = ra.loadAuthz(ctx, acct, authzID)
			}
			if naz != nil {
				if j := slices.IndexFunc(naz.Challenges, func(c *Challenge) bool { return c.Type == typ }); j >= 0 {
					az, c = naz, naz.Challenges[j]
				}
			}
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return az, c, nil
}

// startValidation validates in the background, bounded by the worker
// semaphore and the RA's lifetime; the VA bounds each validation's time.
// The returned channel yields the authorization as this validation
// recorded it (nil if it recorded nothing: another had already) once the
// outcome is stored.
func (ra *RA) startValidation(az *Authorization, c *Challenge, keyAuth string) <-chan *Authorization {
	req := validation.Request{IdentifierType: az.Identifier.Type, Value: az.Identifier.Value, Wildcard: az.Wildcard,
		Challenge: c.Type, Token: c.Token, KeyAuthorization: keyAuth}
	done := make(chan *Authorization, 1)
	if ra.ctx.Err() != nil {
		return done // shutting down: the challenge stays processing until a restart's pruning
	}
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		var recorded *Authorization
		defer func() { done <- recorded }()
		var err error
		select {
		case ra.sem <- struct{}{}:
			err = ra.va.Validate(ra.ctx, req)
			<-ra.sem
		case <-ra.ctx.Done():
			err = ra.ctx.Err()
		}
		if ra.ctx.Err() != nil && err != nil {
			err = fmt.Errorf("validation interrupted: server shutting down: %w", err)
		}
		// Record the outcome even while shutting down, so the challenge
		// does not stay processing.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ra.ctx), 10*time.Second)
		defer cancel()
		var rerr error
		if recorded, rerr = ra.recordValidation(ctx, az.ID, c.Type, err); rerr != nil {
			ra.logger.ErrorContext(ctx, "acme: recording validation", "authz", az.ID, "error", rerr)
		}
	}()
	return done
}

// recordValidation stores the outcome verr of a challenge's validation
// and returns the authorization as saved; nil (and no error) if the
// challenge is no longer processing.
func (ra *RA) recordValidation(ctx context.Context, authzID, typ string, verr error) (*Authorization, error) {
	for range 5 {
		o, err := ra.store.ACME().Get(ctx, kindAuthz, authzID)
		if err != nil {
			return nil, err
		}
		az, err := decode[Authorization](o)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(az.Challenges, func(c *Challenge) bool { return c.Type == typ })
		if i < 0 || az.Challenges[i].Status != StatusProcessing {
			return nil, nil
		}
		c := az.Challenges[i]
		now := ra.now()
		if verr == nil {
			c.Status, c.Validated = StatusValid, &now
			az.Status, az.Expires = StatusValid, now.Add(ra.cfg.AuthzLifetime)
		} else {
			c.Status, c.Error = StatusInvalid, validationError(verr).Problem()
			az.Status = StatusInvalid
		}
		err = ra.saveAuthz(ctx, az, o)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return az, nil
	}
	return nil, fmt.Errorf("authorization %s: %w", authzID, storage.ErrConflict)
}

// staleValidation is how long a challenge may stay processing before a
// client's poll restarts its validation (the node running it may have
// stopped); well above the VA's own bound.
const staleValidation = 2 * time.Minute

// resumeStale restarts a validation left processing by a node that stopped.
// The version check makes one poller, on whichever node, win the restart.
func (ra *RA) resumeStale(ctx context.Context, acct *Account, az *Authorization, o *storage.ACMEObject) {
	now := ra.now()
	for _, c := range az.Challenges {
		if c.Status != StatusProcessing || (c.Started != nil && now.Sub(*c.Started) < staleValidation) {
			continue
		}
		c.Started = &now
		if err := ra.saveAuthz(ctx, az, o); err != nil {
			return // another poller restarted it, or storage failed: the next poll retries
		}
		ra.logger.WarnContext(ctx, "acme: restarting a stale validation", "authz", az.ID, "challenge", c.Type)
		ra.startValidation(az, c, c.Token+"."+acct.Thumbprint())
		return
	}
}
