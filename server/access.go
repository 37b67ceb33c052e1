package server

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
)

// callerFrom is the call's core.Caller, nil when unauthenticated.
func callerFrom(ctx context.Context) *core.Caller {
	if r := requestFrom(ctx); r != nil {
		return r.Caller
	}
	return nil
}

// unaryAudit records every authenticated call: who, what, the policy
// decision and the outcome. If the record cannot be written the call fails
// (fail closed), as an authority that acts unaudited cannot be trusted.
//
// The decision recorded is the one the authorization table (or the
// handler) made on the core.Caller (Authorize, AllowWithoutGrant or Deny);
// a call refused before any check is recorded as not allowed. A call that
// succeeds with no decision at all is a handler bug: its response is
// withheld and the caller gets an internal error, so nothing is ever done
// (or disclosed) unaudited as "allowed".
func (s *Server) unaryAudit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	r := requestFrom(ctx)
	if r != nil && r.Decision == nil && err == nil {
		s.log.ErrorContext(ctx, "BUG: call succeeded without an authorisation decision (authorize or allowWithoutGrant); response withheld", "method", info.FullMethod)
		resp, err = nil, errs.New(errs.Internal, "no authorisation decision")
	}
	if r == nil {
		// Public calls: core audits those that carry a credential (or
		// none, init) itself; health, reflection and status are not
		// recorded.
		return resp, err
	}
	if r.audited && err == nil {
		// Already durable, committed with the call's work.
		return resp, nil
	}
	if aerr := s.core.Audit(ctx, auditRecord(r, info.FullMethod, req, err)); aerr != nil {
		return nil, aerr
	}
	return resp, err
}

// auditRecord is the audit record of an authenticated call to method that
// ended with err (nil: success).
func auditRecord(r *request, method string, req any, err error) audit.Record {
	rec := r.AuditRecord(r.rid, method)
	rec.Status, rec.Request = grpcCode(err).String(), kvAuditRequest(req)
	if err != nil {
		rec.Error = publicMessage(err)
	}
	return rec
}

// successAudit hands core the record of the call's success, for use cases
// that write it with their own transaction (core.CallAudit); nil for an
// unauthenticated call, which unaryAudit records as before.
func successAudit(ctx context.Context, method string, req any) *core.CallAudit {
	r := requestFrom(ctx)
	if r == nil {
		return nil
	}
	return &core.CallAudit{Success: func() audit.Record { return auditRecord(r, method, req, nil) }}
}

// markAudited tells unaryAudit that a's success record is already written.
func markAudited(ctx context.Context, a *core.CallAudit) {
	if r := requestFrom(ctx); r != nil && a.Written() {
		r.audited = true
	}
}

// attempt is what core's audit record of a public call (login, unwrap)
// needs from the transport.
func (s *Server) attempt(ctx context.Context) core.Attempt {
	return core.Attempt{RequestID: requestIDFrom(ctx), Source: loginSource(ctx), Outcome: func(err error) (string, string) {
		return grpcCode(err).String(), publicMessage(err)
	}}
}

type policyService struct {
	sigilv1.UnimplementedPolicyServiceServer
	s *Server
}

func (h policyService) Write(ctx context.Context, req *sigilv1.WritePolicyRequest) (*sigilv1.WritePolicyResponse, error) {
	return onUnsealed(h.s, "write policy", func(u *core.Unsealed) (*sigilv1.WritePolicyResponse, error) {
		_, err := u.Policies.Put(ctx, req.GetName(), req.GetDocument())
		return &sigilv1.WritePolicyResponse{}, err
	})
}

func (h policyService) Read(ctx context.Context, req *sigilv1.ReadPolicyRequest) (*sigilv1.ReadPolicyResponse, error) {
	return onUnsealed(h.s, "read policy", func(u *core.Unsealed) (*sigilv1.ReadPolicyResponse, error) {
		doc, err := u.Policies.Get(ctx, req.GetName())
		return &sigilv1.ReadPolicyResponse{Document: doc}, err
	})
}

func (h policyService) List(ctx context.Context, _ *sigilv1.ListPoliciesRequest) (*sigilv1.ListPoliciesResponse, error) {
	return onUnsealed(h.s, "list policies", func(u *core.Unsealed) (*sigilv1.ListPoliciesResponse, error) {
		names, err := u.Policies.List(ctx)
		return &sigilv1.ListPoliciesResponse{Names: names}, err
	})
}

func (h policyService) Delete(ctx context.Context, req *sigilv1.DeletePolicyRequest) (*sigilv1.DeletePolicyResponse, error) {
	return onUnsealed(h.s, "delete policy", func(u *core.Unsealed) (*sigilv1.DeletePolicyResponse, error) {
		return &sigilv1.DeletePolicyResponse{}, u.Policies.Delete(ctx, req.GetName())
	})
}

func (h policyService) Test(ctx context.Context, req *sigilv1.TestPolicyRequest) (*sigilv1.TestPolicyResponse, error) {
	sub := policy.Subject{SPIFFEID: req.GetSpiffeId(), Policies: req.GetPolicies()}
	res, err := h.s.core.TestPolicy(ctx, sub, req.GetPath(), policy.Capability(req.GetCapability()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.TestPolicyResponse{Allowed: res.Allowed, Explanation: res.Explanation}, nil
}

type tokenService struct {
	sigilv1.UnimplementedTokenServiceServer
	s *Server
}

func tokenInfo(t *storage.Token) *sigilv1.TokenInfo {
	info := &sigilv1.TokenInfo{Id: t.ID, Policies: t.Policies, UsesLeft: int32(t.UsesLeft), CreatedAtUnix: t.CreatedAt.Unix()}
	if !t.ExpiresAt.IsZero() {
		info.ExpiresAtUnix = t.ExpiresAt.Unix()
	}
	return info
}

func (h tokenService) Create(ctx context.Context, req *sigilv1.CreateTokenRequest) (*sigilv1.CreateTokenResponse, error) {
	t, err := h.s.core.CreateToken(ctx, callerFrom(ctx), core.TokenRequest{Policies: req.GetPolicies(), TTLSeconds: req.GetTtlSeconds(),
		Uses: int(req.GetUses()), WrapTTLSeconds: req.GetWrapTtlSeconds(), MaxTTLSeconds: req.GetMaxTtlSeconds(), Recipient: recipientRef(req.GetRecipient())})
	if err != nil {
		return nil, err
	}
	warn(ctx, t.Warnings)
	d := t.Delivery
	return &sigilv1.CreateTokenResponse{Envelope: d.Envelope, Info: tokenInfo(t.Info), WrapToken: d.WrapToken, WrapExpiresAtUnix: wrapExpiry(d)}, nil
}

// warn sends what the server changed from the request (a capped TTL,
// capped uses) in the response header; the capped values are in the body.
func warn(ctx context.Context, warnings []string) {
	if len(warnings) > 0 {
		_ = grpc.SetHeader(ctx, metadata.Pairs(warningHeader, strings.Join(warnings, "; ")))
	}
}

// wrapExpiry is a delivery's wrapping token expiry for the wire (0 when
// the secret was sealed instead).
func wrapExpiry(d *core.Delivery) int64 {
	if d.WrapToken == "" {
		return 0
	}
	return d.WrapExpires.Unix()
}

// warningHeader carries, in a response's header metadata, what the server
// changed from the request (a capped TTL, capped uses).
const warningHeader = "sigil-warning"

func (h tokenService) Lookup(ctx context.Context, req *sigilv1.LookupTokenRequest) (*sigilv1.TokenInfo, error) {
	rec, err := h.s.core.LookupToken(ctx, callerFrom(ctx), req.GetId())
	if err != nil {
		return nil, err
	}
	return tokenInfo(rec), nil
}

func (h tokenService) Revoke(ctx context.Context, req *sigilv1.RevokeTokenRequest) (*sigilv1.RevokeTokenResponse, error) {
	if err := h.s.core.RevokeToken(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return &sigilv1.RevokeTokenResponse{}, nil
}

type auditService struct {
	sigilv1.UnimplementedAuditServiceServer
	s *Server
}

func (h auditService) Verify(ctx context.Context, _ *sigilv1.VerifyAuditRequest) (*sigilv1.VerifyAuditResponse, error) {
	res, err := h.s.core.VerifyAudit(ctx)
	if err != nil {
		return nil, err
	}
	rep := res.Report
	return &sigilv1.VerifyAuditResponse{Ok: res.Problem == "", Records: int64(rep.Records), HeadSeq: rep.Head.Seq,
		HeadHash: fmt.Sprintf("%x", rep.Head.Hash), BadSeq: res.BadSeq, Problem: res.Problem}, nil
}

func (h auditService) Hash(ctx context.Context, req *sigilv1.HashAuditRequest) (*sigilv1.HashAuditResponse, error) {
	return onUnsealed(h.s, "hash", func(u *core.Unsealed) (*sigilv1.HashAuditResponse, error) {
		return &sigilv1.HashAuditResponse{Hash: u.Audit.Hash(req.GetValue())}, nil
	})
}
