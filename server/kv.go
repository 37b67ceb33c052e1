package server

import (
	"context"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines/kv"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// kvService adapts the kv use cases (core/kv.go): decode, call, encode.
// The authorization table has already checked the path and the grant.
type kvService struct {
	sigilv1.UnimplementedKVServiceServer
	s *Server
}

func kvVersion(v *kv.VersionInfo) *sigilv1.KVVersion {
	if v == nil {
		return nil
	}
	out := &sigilv1.KVVersion{Version: int64(v.Version), CreatedAtUnix: v.CreatedAt.Unix(), Destroyed: v.Destroyed}
	if !v.DeletedAt.IsZero() {
		out.DeletedAtUnix = v.DeletedAt.Unix()
	}
	return out
}

func cas(p *int64) *int {
	if p == nil {
		return nil
	}
	n := int(*p)
	return &n
}

// kvAuditRequest is what the audit records of a kv call's request (core
// chooses the fields); other calls record nothing here (their path and
// decision are in the record already).
func kvAuditRequest(req any) map[string]audit.Value {
	switch m := req.(type) {
	case *sigilv1.KVWriteRequest:
		return kvWrite(m, false).AuditRequest()
	case *sigilv1.KVGetRequest:
		return core.KVReadAuditRequest(m.GetMount(), m.GetPath(), m.GetVersion())
	}
	return nil
}

func kvWrite(req *sigilv1.KVWriteRequest, patch bool) core.KVWrite {
	return core.KVWrite{Mount: req.GetMount(), Path: req.GetPath(), Data: req.GetData(), Remove: req.GetRemove(), CAS: cas(req.Cas), Patch: patch}
}

func (h kvService) Put(ctx context.Context, req *sigilv1.KVWriteRequest) (*sigilv1.KVVersion, error) {
	v, err := h.s.core.WriteKV(ctx, callerFrom(ctx), kvWrite(req, false))
	return reply(kvVersion(v), err)
}

func (h kvService) Patch(ctx context.Context, req *sigilv1.KVWriteRequest) (*sigilv1.KVVersion, error) {
	v, err := h.s.core.WriteKV(ctx, callerFrom(ctx), kvWrite(req, true))
	return reply(kvVersion(v), err)
}

func (h kvService) Get(ctx context.Context, req *sigilv1.KVGetRequest) (*sigilv1.KVGetResponse, error) {
	v, d, err := h.s.core.ReadKV(ctx, callerFrom(ctx), req.GetMount(), req.GetPath(), int(req.GetVersion()), recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.KVGetResponse{Version: kvVersion(v), Envelope: d.Envelope}, nil
}

// onKV runs f on the request's kv mount; op names the step in its error.
func onKV[T any](ctx context.Context, h kvService, mount, op string, f func(core.KVStore) (*T, error)) (*T, error) {
	e, err := h.s.core.KV(ctx, mount)
	if err != nil {
		return nil, err
	}
	resp, err := f(e)
	return reply(resp, core.OpError(op, err))
}

func (h kvService) List(ctx context.Context, req *sigilv1.KVListRequest) (*sigilv1.KVListResponse, error) {
	return onKV(ctx, h, req.GetMount(), "kv list", func(e core.KVStore) (*sigilv1.KVListResponse, error) {
		keys, next, err := e.List(ctx, req.GetPrefix(), req.GetAfter(), int(req.GetLimit()))
		return &sigilv1.KVListResponse{Keys: keys, Next: next}, err
	})
}

func ints(vs []int64) []int {
	out := make([]int, len(vs))
	for i, v := range vs {
		out[i] = int(v)
	}
	return out
}

// kvVersions adapts Delete, Undelete and Destroy, which differ only in
// the engine method.
func (h kvService) kvVersions(ctx context.Context, req *sigilv1.KVVersionsRequest, op string, f func(core.KVStore) func(context.Context, string, []int) (int, error)) (*sigilv1.KVVersionsResponse, error) {
	return onKV(ctx, h, req.GetMount(), op, func(e core.KVStore) (*sigilv1.KVVersionsResponse, error) {
		n, err := f(e)(ctx, req.GetPath(), ints(req.GetVersions()))
		return &sigilv1.KVVersionsResponse{Changed: int64(n)}, err
	})
}

func (h kvService) Delete(ctx context.Context, req *sigilv1.KVVersionsRequest) (*sigilv1.KVVersionsResponse, error) {
	return h.kvVersions(ctx, req, "kv delete", func(e core.KVStore) func(context.Context, string, []int) (int, error) { return e.Delete })
}

func (h kvService) Undelete(ctx context.Context, req *sigilv1.KVVersionsRequest) (*sigilv1.KVVersionsResponse, error) {
	return h.kvVersions(ctx, req, "kv undelete", func(e core.KVStore) func(context.Context, string, []int) (int, error) { return e.Undelete })
}

func (h kvService) Destroy(ctx context.Context, req *sigilv1.KVVersionsRequest) (*sigilv1.KVVersionsResponse, error) {
	return h.kvVersions(ctx, req, "kv destroy", func(e core.KVStore) func(context.Context, string, []int) (int, error) { return e.Destroy })
}

func (h kvService) Rollback(ctx context.Context, req *sigilv1.KVRollbackRequest) (*sigilv1.KVVersion, error) {
	return onKV(ctx, h, req.GetMount(), "kv rollback", func(e core.KVStore) (*sigilv1.KVVersion, error) {
		v, err := e.Rollback(ctx, req.GetPath(), int(req.GetVersion()), cas(req.Cas))
		return kvVersion(v), err
	})
}

func kvMetadata(m *kv.Metadata) *sigilv1.KVMetadata {
	out := &sigilv1.KVMetadata{Path: m.Path, CurrentVersion: int64(m.CurrentVersion), OldestVersion: int64(m.OldestVersion),
		MaxVersions: int64(m.MaxVersions), CasRequired: m.CASRequired, DeleteVersionAfterSeconds: int64(m.DeleteVersionAfter / time.Second),
		Custom: m.Custom, CreatedAtUnix: m.CreatedAt.Unix(), UpdatedAtUnix: m.UpdatedAt.Unix()}
	for _, v := range m.Versions {
		out.Versions = append(out.Versions, kvVersion(&v))
	}
	return out
}

func (h kvService) ReadMetadata(ctx context.Context, req *sigilv1.KVPathRequest) (*sigilv1.KVMetadata, error) {
	return onKV(ctx, h, req.GetMount(), "kv metadata", func(e core.KVStore) (*sigilv1.KVMetadata, error) {
		m, err := e.ReadMetadata(ctx, req.GetPath())
		if err != nil {
			return nil, err
		}
		return kvMetadata(m), nil
	})
}

func (h kvService) WriteMetadata(ctx context.Context, req *sigilv1.KVWriteMetadataRequest) (*sigilv1.KVMetadata, error) {
	m, err := h.s.core.WriteKVMetadata(ctx, req.GetMount(), req.GetPath(), core.KVMetadataUpdate{MaxVersions: req.MaxVersions,
		CASRequired: req.CasRequired, DeleteVersionAfterSeconds: req.DeleteVersionAfterSeconds, ReplaceCustom: req.GetReplaceCustom(), Custom: req.GetCustom()})
	if err != nil {
		return nil, err
	}
	return kvMetadata(m), nil
}

func (h kvService) DeleteMetadata(ctx context.Context, req *sigilv1.KVPathRequest) (*sigilv1.KVDeleteMetadataResponse, error) {
	return onKV(ctx, h, req.GetMount(), "kv metadata delete", func(e core.KVStore) (*sigilv1.KVDeleteMetadataResponse, error) {
		return &sigilv1.KVDeleteMetadataResponse{}, e.DeleteMetadata(ctx, req.GetPath())
	})
}
