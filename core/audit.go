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
	return c.auditFailed(ctx, rec.Operation, err)
}

// auditFailed logs a failed audit write and is the error the caller gets.
func (c *Core) auditFailed(ctx context.Context, op string, err error) error {
	c.log.ErrorContext(ctx, "audit log write failed; failing the request", "operation", op, "err", err)
	return &errs.Error{Kind: errs.Internal, Op: "audit log unavailable: the request was not completed"}
}

// CallAudit lets a transport hand core the audit record of a call's
// success, so that core writes it in the same transaction as the call's
// own durable work (Sign: the certificate's inventory row). The record and
// the work then commit together or not at all: nothing is issued whose
// audit record is not durable, and one commit serves both.
type CallAudit struct {
	// Success builds the record of the call succeeding (its status, its
	// request summary). Core calls it once authorisation has decided and
	// before the work, so the decision it records is final.
	Success func() audit.Record
	written bool
}

// Written reports whether core wrote the success record. The transport
// must then not write it again; a call that fails after all (an error
// returned by anything later) is still the transport's to record.
func (a *CallAudit) Written() bool { return a != nil && a.written }

// stageAudit prepares a's success record for the transaction that does
// the call's work. It returns nil (the transport audits as for any call)
// when there is nothing to stage, when no sink can append in a transaction,
// or with audit.fail_open, whose contract (proceed when the log cannot be
// written) a shared transaction could not keep.
func (c *Core) stageAudit(ctx context.Context, u *Unsealed, a *CallAudit) (*audit.Staged, error) {
	if a == nil || a.Success == nil || u.Audit == nil || c.opts.Config.Audit.FailOpen {
		return nil, nil
	}
	rec := a.Success()
	st, err := u.Audit.Stage(rec)
	if err != nil {
		return nil, c.auditFailed(ctx, rec.Operation, err)
	}
	return st, nil
}

// finishAudit writes a staged record to the sinks outside the transaction
// (a file, a stream) once the transaction has committed, and marks a as
// written.
func (c *Core) finishAudit(ctx context.Context, st *audit.Staged, a *CallAudit, op string) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditWriteTimeout)
	defer cancel()
	if err := st.Finish(actx); err != nil {
		// The database holds the record and the certificate; the caller
		// gets neither the certificate nor success.
		return c.auditFailed(ctx, op, err)
	}
	a.written = true
	return nil
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
