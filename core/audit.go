package core

import (
	"context"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/internal/errs"
)

// auditWriteTimeout bounds one audit write, detached from the caller.
const auditWriteTimeout = 10 * time.Second

// Audit writes rec while unsealed (sealed, there is no log to write to).
// When it cannot, the call must fail (the default), as an authority that
// acts unaudited cannot be trusted; with audit.fail_open it proceeds with
// the failure logged.
func (c *Core) Audit(ctx context.Context, rec audit.Record) error {
	u := c.Current()
	if u == nil || u.Audit == nil {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditWriteTimeout)
	defer cancel()
	err := u.Audit.Log(actx, rec)
	if err == nil {
		return nil
	}
	if c.opts.Config.Audit.FailOpen {
		c.log.ErrorContext(ctx, "audit log write failed; proceeding (audit.fail_open)", "operation", rec.Operation, "err", err)
		return nil
	}
	c.log.ErrorContext(ctx, "audit log write failed; failing the request", "operation", rec.Operation, "err", err)
	return &errs.Error{Kind: errs.Internal, Op: "audit log unavailable: the request was not completed"}
}

// AuditRecord is the audit record of the caller's call: who, how it
// authenticated, the decision made (a call refused before any check is
// recorded as not allowed) and the leases and response it recorded.
func (c *Caller) AuditRecord(requestID, op string) audit.Record {
	method := "token"
	if c.Identity.SPIFFEID != "" && c.Identity.TokenID == "" {
		method = "mtls"
	}
	rec := audit.Record{RequestID: requestID, Identity: c.Name(), AuthMethod: method, Operation: op, Path: c.Path,
		Decision: audit.Decision{Allowed: false, Reason: "refused before any authorisation check"},
		LeaseIDs: c.LeaseIDs, Response: c.AuditResponse}
	if c.Decision != nil {
		rec.Decision = *c.Decision
	}
	return rec
}
