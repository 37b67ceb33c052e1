package core

import (
	"context"
	"strings"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/ca"
)

// Attempt is what a transport knows about a public login call that its
// audit record needs: the server's request id, where the call came from,
// and how the transport will answer an error (the status name and the
// message the caller sees), so the record says what the caller was told.
type Attempt struct {
	RequestID string
	// Source is the client's address, also the key of per-source failure
	// limiting.
	Source  string
	Outcome func(error) (status, msg string)
}

// AuditedLogin is Login with the attempt audited, successful or not.
func (c *Core) AuditedLogin(ctx context.Context, at Attempt, mount string, creds authmethod.Credentials, ref *RecipientRef) (*LoginResult, error) {
	fields := map[string]audit.Value{"role": audit.Plain(creds.Role)}
	if creds.JWT != "" {
		fields["jwt"] = audit.Secret(creds.JWT)
	}
	if creds.Username != "" {
		fields["username"] = audit.Plain(creds.Username)
	}
	return c.auditedLogin(ctx, at, "login", mount, fields, func() (*LoginResult, error) {
		res, err := c.Login(ctx, at.Source, mount, creds, ref)
		return res, OpError("login", err)
	})
}

// AuditedCallback is Callback with the attempt audited, successful or not.
func (c *Core) AuditedCallback(ctx context.Context, at Attempt, mount string, creds authmethod.Credentials, ref *RecipientRef) (*LoginResult, error) {
	fields := map[string]audit.Value{"state": audit.Secret(creds.State), "code": audit.Secret(creds.Code)}
	return c.auditedLogin(ctx, at, "callback", mount, fields, func() (*LoginResult, error) {
		res, err := c.Callback(ctx, at.Source, mount, creds, ref)
		return res, OpError("oidc callback", err)
	})
}

// auditedLogin runs login and records the attempt: the credential only as
// an HMAC (fields), the identity and policies on success, the reason on
// failure. When the record cannot be written the login fails, and a token
// it issued is revoked: a login nobody can account for must not leave a
// token behind. Sealed, there is no log to write to and nothing to do.
func (c *Core) auditedLogin(ctx context.Context, at Attempt, op, mount string, fields map[string]audit.Value,
	login func() (*LoginResult, error)) (*LoginResult, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	res, err := login()
	if aerr := c.Audit(ctx, loginRecord(at, op, mount, fields, res, err)); aerr != nil {
		if res != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditWriteTimeout)
			defer cancel()
			if rerr := u.Leases.Revoke(rctx, res.LeaseID); rerr != nil {
				c.log.ErrorContext(ctx, "revoke the token of an unaudited login", "lease", res.LeaseID, "err", rerr)
			}
		}
		return nil, aerr
	}
	return res, err
}

// loginRecord is the audit record of a login attempt on mount.
func loginRecord(at Attempt, op, mount string, fields map[string]audit.Value, res *LoginResult, err error) audit.Record {
	status, msg := at.Outcome(err)
	rec := audit.Record{RequestID: at.RequestID, Identity: "unauthenticated", AuthMethod: "auth/" + mount,
		Operation: "/sigil.v1.AuthMethodService/" + strings.ToUpper(op[:1]) + op[1:], Path: "auth/" + mount + "/" + op,
		Decision: audit.Decision{Allowed: err == nil, Reason: "credential verified by auth method"}, Status: status,
		Request: fields}
	rec.Request["source"] = audit.Plain(at.Source)
	if res != nil {
		rec.Identity = loginOwner(mount, res.Verified.Identity.Name)
		rec.AuthMethod = res.Verified.Type
		rec.LeaseIDs = []string{res.LeaseID}
		rec.Response = map[string]audit.Value{"token_id": audit.Plain(res.Info.ID), "policies": audit.Plain(strings.Join(res.Verified.Policies, ","))}
	}
	if err != nil {
		rec.Error, rec.Decision.Reason = msg, "login refused"
	}
	return rec
}

// AuditedInit is Init with the call audited. Init of an uninitialised
// server is open to any caller by design.
func (c *Core) AuditedInit(ctx context.Context, at Attempt, operation string, req InitRequest) (*InitResult, error) {
	res, err := c.Init(ctx, req)
	return auditedPublic(ctx, c, at, operation, "init is open to any caller while uninitialised", map[string]audit.Value{}, res, err)
}

// AuditedUnseal is Unseal (or, with reset, ResetUnseal) with the call
// audited; the share it carries is its credential, recorded as an HMAC.
func (c *Core) AuditedUnseal(ctx context.Context, at Attempt, operation, share string, reset bool) (UnsealStatus, error) {
	var st UnsealStatus
	var err error
	if reset {
		st, err = c.ResetUnseal()
	} else {
		st, err = c.Unseal(ctx, share)
	}
	return auditedPublic(ctx, c, at, operation, "unseal share accepted", map[string]audit.Value{"share": audit.Secret(share)}, st, err)
}

// AuditedEnroll is Enroll with the call audited; the join token it carries
// is its credential, recorded as an HMAC.
func (c *Core) AuditedEnroll(ctx context.Context, at Attempt, operation, joinToken string, csr []byte) (*ca.Issued, error) {
	issued, err := c.Enroll(ctx, joinToken, csr)
	return auditedPublic(ctx, c, at, operation, "join token accepted", map[string]audit.Value{"join_token": audit.Secret(joinToken)}, issued, err)
}

// auditedPublic records a call that carries its own credential (an unseal
// share, a join token; secrets holds it, only as an HMAC) or none (init),
// and returns its result: reason says why it was allowed, and only its
// success is an authorisation. When the record cannot be written the call
// fails and its result is withheld.
func auditedPublic[T any](ctx context.Context, c *Core, at Attempt, operation, reason string, secrets map[string]audit.Value, res T, err error) (T, error) {
	status, msg := at.Outcome(err)
	rec := audit.Record{RequestID: at.RequestID, Identity: "unauthenticated", Operation: operation,
		Decision: audit.Decision{Allowed: err == nil, Reason: reason}, Status: status, Request: secrets}
	if err != nil {
		rec.Error, rec.Decision.Reason = msg, "refused"
	}
	if aerr := c.Audit(ctx, rec); aerr != nil {
		var zero T
		return zero, aerr
	}
	return res, err
}
