package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
)

// request is what one authenticated call carries from authentication
// through authorisation to the audit record.
type request struct {
	// rid correlates the audit record with logs and the caller's error:
	// the server-chosen request id.
	rid  string
	id   *auth.Identity
	set  *policy.Set
	path string
	// decision is nil until an authorisation decision is made (authorize,
	// or allowWithoutGrant for a deliberate no-grant path): the audit
	// never records "allowed" for a call that was not authorised.
	decision *audit.Decision
	leaseIDs []string
	// response holds what a handler chose to audit of its reply (kv
	// reads: field names with HMACs of the values).
	response map[string]audit.Value
}

type requestKey struct{}

func requestFrom(ctx context.Context) *request {
	r, _ := ctx.Value(requestKey{}).(*request)
	return r
}

// authorize checks the caller's policies for capability c on path and
// records the decision for the audit log. Deny by default: a caller with no
// grant gets a permission error naming the path.
func (s *Server) authorize(ctx context.Context, path string, c policy.Capability) error {
	r := requestFrom(ctx)
	if r == nil || r.set == nil {
		return status.Error(codes.PermissionDenied, "permission denied: unauthenticated call to "+path)
	}
	d := r.set.Allowed(path, c)
	r.path = path
	r.decision = &audit.Decision{Allowed: d.Allowed, Reason: d.Reason}
	if !d.Allowed {
		return status.Error(codes.PermissionDenied, d.Err().Error())
	}
	return nil
}

// allowWithoutGrant records a deliberate decision that this call needs no
// grant (it discloses or changes nothing beyond what the caller holds),
// with the reason the audit log shows. A handler that returns success
// without this or authorize is refused by unaryAudit.
func (s *Server) allowWithoutGrant(ctx context.Context, path, reason string) {
	if r := requestFrom(ctx); r != nil {
		r.path = path
		r.decision = &audit.Decision{Allowed: true, Reason: reason}
	}
}

// deny refuses a call for a reason beyond the policy decision on path (an
// ownership or delegation rule), recording it for the audit so the record
// never says "allowed" for a refused call.
func (s *Server) deny(ctx context.Context, path, reason string) error {
	if r := requestFrom(ctx); r != nil {
		r.path = path
		r.decision = &audit.Decision{Allowed: false, Reason: reason}
	}
	return status.Error(codes.PermissionDenied, "permission denied: "+reason)
}

// limit applies the per-identity, per-path token bucket to minting and
// issuance, after authorisation (so a denied caller cannot drain it).
func (s *Server) limit(ctx context.Context) error {
	r := requestFrom(ctx)
	if r == nil {
		return nil
	}
	ok, wait := s.limiter.Allow(r.id.Name + "|" + r.path)
	if ok {
		return nil
	}
	secs := max(1, int(wait.Round(time.Second)/time.Second))
	_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", fmt.Sprint(secs)))
	return status.Errorf(codes.ResourceExhausted, "rate limited on %s: retry after %v", r.path, wait.Round(time.Millisecond))
}

// allowCertNames returns the CA's grant check for the names a certificate
// will carry.
func (s *Server) allowCertNames(ctx context.Context) func(names []string) error {
	r := requestFrom(ctx)
	return func(names []string) error {
		if r == nil || r.set == nil {
			return policy.ErrPermissionDenied
		}
		return r.set.NamesAllowed(names)
	}
}

// unaryAudit records every authenticated call: who, what, the policy
// decision and the outcome. If the record cannot be written the call fails
// (fail closed), as an authority that acts unaudited cannot be trusted.
//
// The decision recorded is the one authorize (or allowWithoutGrant) made;
// a call refused before any check is recorded as not allowed. A call that
// succeeds with no decision at all is a handler bug: its response is
// withheld and the caller gets an internal error, so nothing is ever done
// (or disclosed) unaudited as "allowed".
func (s *Server) unaryAudit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	r := requestFrom(ctx)
	if r != nil && r.decision == nil && err == nil {
		s.log.ErrorContext(ctx, "BUG: call succeeded without an authorisation decision (authorize or allowWithoutGrant); response withheld", "method", info.FullMethod)
		resp, err = nil, errs.New(errs.Internal, "no authorisation decision")
	}
	a := s.current()
	if a == nil || a.Audit == nil {
		return resp, err
	}
	if r == nil {
		return s.auditUnauthenticated(ctx, a, req, info.FullMethod, resp, err)
	}
	method := "token"
	if r.id.SPIFFEID != "" && r.id.TokenID == "" {
		method = "mtls"
	}
	rec := audit.Record{
		RequestID: r.rid, Identity: r.id.Name, AuthMethod: method, Operation: info.FullMethod, Path: r.path,
		Decision: audit.Decision{Allowed: false, Reason: "refused before any authorisation check"},
		Status:   grpcCode(err).String(), LeaseIDs: r.leaseIDs,
		Request: kvAuditRequest(req), Response: r.response,
	}
	if r.decision != nil {
		rec.Decision = *r.decision
	}
	if err != nil {
		rec.Error = publicMessage(err)
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if aerr := s.logAudit(actx, a, rec); aerr != nil {
		return nil, aerr
	}
	return resp, err
}

// auditUnauthenticated records the calls that carry their own credential
// (an unseal share, a join token) or none (init): their secrets appear only
// as HMACs. Health, reflection and status are not recorded.
func (s *Server) auditUnauthenticated(ctx context.Context, a *core.Unsealed, req any, method string, resp any, err error) (any, error) {
	secrets := map[string]audit.Value{}
	var reason string
	switch m := req.(type) {
	case *sigilv1.UnsealRequest:
		secrets["share"] = audit.Secret(m.GetShare())
		reason = "unseal share accepted"
	case *sigilv1.EnrollRequest:
		secrets["join_token"] = audit.Secret(m.GetJoinToken())
		reason = "join token accepted"
	case *sigilv1.InitRequest:
		reason = "init is open to any caller while uninitialised"
	default:
		return resp, err
	}
	// The credential these calls carry (share, join token) is checked by
	// the handler: only its success is an authorisation; init of an
	// uninitialised server is open by design.
	rec := audit.Record{RequestID: requestIDFrom(ctx), Identity: "unauthenticated", Operation: method,
		Decision: audit.Decision{Allowed: err == nil, Reason: reason},
		Status:   grpcCode(err).String(), Request: secrets}
	if err != nil {
		rec.Error = publicMessage(err)
		rec.Decision.Reason = "refused"
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if aerr := s.logAudit(actx, a, rec); aerr != nil {
		return nil, aerr
	}
	return resp, err
}

// logAudit writes rec. When it cannot, the request fails (the default) or,
// with audit.fail_open, proceeds with the failure logged.
func (s *Server) logAudit(ctx context.Context, a *core.Unsealed, rec audit.Record) error {
	err := a.Audit.Log(ctx, rec)
	if err == nil {
		return nil
	}
	if s.cfg.Audit.FailOpen {
		s.log.Error("audit log write failed; proceeding (audit.fail_open)", "operation", rec.Operation, "err", err)
		return nil
	}
	s.log.Error("audit log write failed; failing the request", "operation", rec.Operation, "err", err)
	return status.Error(codes.Internal, "audit log unavailable: the request was not completed")
}

// policyEngine returns the current compiled policies.
func (s *Server) policySet(ctx context.Context, a *core.Unsealed, id *auth.Identity) (*policy.Set, error) {
	eng, err := a.Policies.Engine(ctx)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	return eng.SetFor(policy.Subject{SPIFFEID: id.SPIFFEID, TokenID: id.TokenID, Policies: id.Policies}), nil
}

type policyService struct {
	sigilv1.UnimplementedPolicyServiceServer
	s *Server
}

func (h policyService) Write(ctx context.Context, req *sigilv1.WritePolicyRequest) (*sigilv1.WritePolicyResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if _, err := a.Policies.Put(ctx, req.GetName(), req.GetDocument()); err != nil {
		return nil, h.s.grpcError("write policy", err)
	}
	return &sigilv1.WritePolicyResponse{}, nil
}

func (h policyService) Read(ctx context.Context, req *sigilv1.ReadPolicyRequest) (*sigilv1.ReadPolicyResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	doc, err := a.Policies.Get(ctx, req.GetName())
	if err != nil {
		return nil, h.s.grpcError("read policy", err)
	}
	return &sigilv1.ReadPolicyResponse{Document: doc}, nil
}

func (h policyService) List(ctx context.Context, _ *sigilv1.ListPoliciesRequest) (*sigilv1.ListPoliciesResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	names, err := a.Policies.List(ctx)
	if err != nil {
		return nil, h.s.grpcError("list policies", err)
	}
	return &sigilv1.ListPoliciesResponse{Names: names}, nil
}

func (h policyService) Delete(ctx context.Context, req *sigilv1.DeletePolicyRequest) (*sigilv1.DeletePolicyResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if err := a.Policies.Delete(ctx, req.GetName()); err != nil {
		return nil, h.s.grpcError("delete policy", err)
	}
	return &sigilv1.DeletePolicyResponse{}, nil
}

func (h policyService) Test(ctx context.Context, req *sigilv1.TestPolicyRequest) (*sigilv1.TestPolicyResponse, error) {
	c := policy.Capability(req.GetCapability())
	if !c.Valid() {
		return nil, status.Errorf(codes.InvalidArgument, "capability %q: use read, create, update, delete, list or sudo", c)
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	eng, err := a.Policies.Engine(ctx)
	if err != nil {
		return nil, h.s.grpcError("load policies", err)
	}
	sub := policy.Subject{SPIFFEID: req.GetSpiffeId(), Policies: req.GetPolicies()}
	x := eng.Explain(sub, req.GetPath(), c)
	return &sigilv1.TestPolicyResponse{Allowed: eng.SetFor(sub).Allowed(req.GetPath(), c).Allowed, Explanation: x.String()}, nil
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
	if len(req.GetPolicies()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "a token needs at least one policy (deny by default)")
	}
	for _, p := range req.GetPolicies() {
		if err := policy.ValidName(p); err != nil && p != policy.RootPolicy {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	maxTTL := h.s.tokenMaxTTL()
	ttl, err := secondsField("ttl_seconds", req.GetTtlSeconds(), maxTTL, "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	wrapTTL, err := secondsField("wrap_ttl_seconds", req.GetWrapTtlSeconds(), maxTTL, "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	if req.GetUses() < 0 {
		return nil, status.Error(codes.InvalidArgument, "uses must not be negative")
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	opts, warnings, err := h.delegate(ctx, a, req.GetPolicies(), ttl, int(req.GetUses()))
	if err != nil {
		return nil, err
	}
	// Resolve the recipient first: a token nobody can receive is never made.
	to, err := h.s.core.Destination(ctx, recipientRef(req.GetRecipient()), wrapTTL)
	if err != nil {
		return nil, err
	}
	id := identityFrom(ctx)
	tok, rec, err := h.s.createLeasedToken(ctx, a, opts, id.Name, leaseOwner(id))
	if err != nil {
		return nil, h.s.grpcError("create token", err)
	}
	leaseID := tokenLeaseID(rec.ID)
	if r := requestFrom(ctx); r != nil {
		r.leaseIDs = append(r.leaseIDs, leaseID)
	}
	if len(warnings) > 0 {
		// The capped expiry and uses are in the response; the header says
		// why they differ from what was asked.
		_ = grpc.SetHeader(ctx, metadata.Pairs(warningHeader, strings.Join(warnings, "; ")))
	}
	// A sealed token is bound to its id; a wrapped one to its lease.
	bind := rec.ID
	if to.Wrapped() {
		bind = leaseID
	}
	d, err := h.s.core.Deliver(ctx, to, core.Secret{BindingID: bind, Data: map[string]string{"token": tok, "id": rec.ID}},
		func(ctx context.Context) error { return a.Leases.Revoke(ctx, leaseID) })
	if err != nil {
		return nil, err
	}
	return &sigilv1.CreateTokenResponse{Envelope: d.Envelope, Info: tokenInfo(rec), WrapToken: d.WrapToken, WrapExpiresAtUnix: wrapExpiry(d)}, nil
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

// tokenMaxTTL is the longest lifetime a new token may have.
func (s *Server) tokenMaxTTL() time.Duration {
	if d := time.Duration(s.cfg.Tokens.MaxTTL); d > 0 {
		return d
	}
	return config.DefaultTokenMaxTTL
}

// secondsField converts a seconds count from the wire to a duration. It
// refuses negative counts and counts above limit (named by limitName; a zero
// limit means only what a time.Duration can hold), so the conversion can
// never overflow into a negative or tiny duration.
func secondsField(name string, secs int64, limit time.Duration, limitName string) (time.Duration, error) {
	if secs < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "%s must not be negative (got %d)", name, secs)
	}
	if limit > 0 && secs > int64(limit/time.Second) {
		return 0, status.Errorf(codes.InvalidArgument, "%s %d (%s) exceeds %s %s", name, secs, humanSeconds(secs), limitName, limit)
	}
	if secs > int64(math.MaxInt64/time.Second) {
		return 0, status.Errorf(codes.InvalidArgument, "%s %d is out of range: at most %d seconds (about 292 years)", name, secs, int64(math.MaxInt64/time.Second))
	}
	return time.Duration(secs) * time.Second, nil
}

// humanSeconds renders a seconds count as hours or years without
// overflowing a time.Duration.
func humanSeconds(secs int64) string {
	const year = 365 * 24 * 3600
	if secs >= year {
		return fmt.Sprintf("about %d years", secs/year)
	}
	return (time.Duration(secs) * time.Second).String()
}

// delegate bounds a new token by its creator. Token creation delegates,
// never escalates: a creator grants only policies it holds itself; only a
// root caller, or one granted create (with sudo) on sys/tokens/root, grants
// root; every granted policy must exist; the child expires no later than
// its creator and has no more uses left than its creator. A TTL or use
// count above the creator's is capped, and each cap is reported in the
// returned warnings.
func (h tokenService) delegate(ctx context.Context, a *core.Unsealed, policies []string, ttl time.Duration, uses int) (auth.CreateOptions, []string, error) {
	r := requestFrom(ctx)
	if r == nil || r.set == nil || r.id == nil {
		return auth.CreateOptions{}, nil, status.Error(codes.PermissionDenied, "permission denied: unauthenticated token creation")
	}
	eng, err := a.Policies.Engine(ctx)
	if err != nil {
		return auth.CreateOptions{}, nil, h.s.grpcError("load policies", err)
	}
	wantRoot := slices.Contains(policies, policy.RootPolicy)
	for _, p := range policies {
		if p == policy.RootPolicy {
			continue
		}
		if _, ok := eng.Policy(p); !ok {
			return auth.CreateOptions{}, nil, status.Errorf(codes.InvalidArgument, "policy %q does not exist: write it first (sigil policy write %s FILE)", p, p)
		}
	}
	if wantRoot {
		if err := h.s.authorize(ctx, "sys/tokens/root", policy.Create); err != nil {
			return auth.CreateOptions{}, nil, status.Errorf(codes.PermissionDenied,
				"only the root token, or a holder of create with sudo on sys/tokens/root, may create a root token: %s", status.Convert(err).Message())
		}
	} else if !r.set.IsRoot() {
		held := r.set.Policies()
		for _, p := range policies {
			if !slices.Contains(held, p) {
				return auth.CreateOptions{}, nil, h.s.deny(ctx, "sys/tokens", fmt.Sprintf(
					"policy %q is not held by %s: a token can grant only policies its creator holds (holds: %s)",
					p, r.id.Name, strings.Join(held, ", ")))
			}
		}
	}
	var warnings []string
	requested := ttl
	if ttl == 0 {
		// No more tokens that never expire: the default is the maximum.
		ttl = h.s.tokenMaxTTL()
	}
	if exp := r.id.ExpiresAt; !exp.IsZero() {
		left := time.Until(exp).Truncate(time.Second)
		if left < time.Second {
			return auth.CreateOptions{}, nil, status.Errorf(codes.FailedPrecondition, "the creating token expires at %s: no lifetime left to delegate", exp.UTC().Format(time.RFC3339))
		}
		if ttl > left {
			ttl = left
			if requested > 0 {
				warnings = append(warnings, fmt.Sprintf("ttl capped to %s: the creating token expires at %s", left, exp.UTC().Format(time.RFC3339)))
			}
		}
	}
	switch left := r.id.UsesLeft; {
	case left < 0:
		return auth.CreateOptions{}, nil, status.Error(codes.FailedPrecondition, "the creating token spent its last use on this call: no uses left to delegate")
	case left > 0 && (uses == 0 || uses > left):
		if uses > 0 {
			warnings = append(warnings, fmt.Sprintf("uses capped to %d: the creating token has %d uses left", left, left))
		}
		uses = left
	}
	return auth.CreateOptions{Policies: policies, TTL: ttl, Uses: uses}, warnings, nil
}

func (h tokenService) Lookup(ctx context.Context, req *sigilv1.LookupTokenRequest) (*sigilv1.TokenInfo, error) {
	id := req.GetId()
	if id == "" || id == requestFrom(ctx).id.TokenID {
		// Every token may look itself up.
		id = requestFrom(ctx).id.TokenID
		h.s.allowWithoutGrant(ctx, "sys/tokens/"+id, "a token may look itself up")
	} else if err := h.s.authorize(ctx, "sys/tokens/"+id, policy.Read); err != nil {
		return nil, err
	}
	rec, err := h.s.store.Tokens().Get(ctx, id)
	if err != nil {
		return nil, h.s.grpcError("look up token", err)
	}
	return tokenInfo(rec), nil
}

func (h tokenService) Revoke(ctx context.Context, req *sigilv1.RevokeTokenRequest) (*sigilv1.RevokeTokenResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	// Revoking the lease deletes the token; a token from before leases
	// tracked them is deleted directly.
	err = a.Leases.Revoke(ctx, tokenLeaseID(req.GetId()))
	if errors.Is(err, lease.ErrNotFound) {
		err = a.Tokens.Delete(ctx, req.GetId())
	}
	if err != nil {
		return nil, h.s.grpcError("revoke token", err)
	}
	return &sigilv1.RevokeTokenResponse{}, nil
}

type auditService struct {
	sigilv1.UnimplementedAuditServiceServer
	s *Server
}

func (h auditService) Verify(ctx context.Context, _ *sigilv1.VerifyAuditRequest) (*sigilv1.VerifyAuditResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	k, err := a.Custody.Key(ctx, auditCheckpointKey)
	if err != nil {
		return nil, h.s.grpcError("audit checkpoint key", err)
	}
	rep, err := audit.VerifyDB(ctx, h.s.store.Audit(), audit.VerifyOptions{PublicKey: k.Public, CheckpointEvery: auditCheckpointEvery})
	resp := &sigilv1.VerifyAuditResponse{Ok: err == nil, Records: int64(rep.Records), HeadSeq: rep.Head.Seq, HeadHash: fmt.Sprintf("%x", rep.Head.Hash)}
	var ve *audit.VerifyError
	switch {
	case errors.As(err, &ve):
		resp.BadSeq, resp.Problem = ve.Seq, ve.Error()
	case err != nil:
		return nil, h.s.grpcError("verify audit log", err)
	}
	return resp, nil
}

func (h auditService) Hash(ctx context.Context, req *sigilv1.HashAuditRequest) (*sigilv1.HashAuditResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	return &sigilv1.HashAuditResponse{Hash: a.Audit.Hash(req.GetValue())}, nil
}
