package server

import (
	"context"
	"encoding/base64"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines/kv"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// kvService adapts the kv engine: decode, authorise, call, encode.
type kvService struct {
	sigilv1.UnimplementedKVServiceServer
	s *Server
}

// KVEnvelopeID is the id a kv read's envelope is bound to.
func KVEnvelopeID(mount, path string) string { return "kv:" + mount + "/data/" + path }

// kvStore is what the kv adapter needs of a mount's engine: found by
// interface, so server names no concrete engine type.
type kvStore interface {
	Put(ctx context.Context, path string, data map[string][]byte, cas *int) (*kv.VersionInfo, error)
	Patch(ctx context.Context, path string, data map[string][]byte, remove []string, cas *int) (*kv.VersionInfo, error)
	Rollback(ctx context.Context, path string, version int, cas *int) (*kv.VersionInfo, error)
	Get(ctx context.Context, path string, version int) (*kv.Secret, error)
	Delete(ctx context.Context, path string, versions []int) (int, error)
	Undelete(ctx context.Context, path string, versions []int) (int, error)
	Destroy(ctx context.Context, path string, versions []int) (int, error)
	List(ctx context.Context, prefix, after string, limit int) ([]string, string, error)
	ReadMetadata(ctx context.Context, path string) (*kv.Metadata, error)
	WriteMetadata(ctx context.Context, path string, u kv.MetadataUpdate) error
	DeleteMetadata(ctx context.Context, path string) error
}

// engine returns the mount's kv engine; the authorization table has
// already checked the path and the caller's grant.
func (h kvService) engine(ctx context.Context, mount string) (kvStore, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	eng, err := a.Mounts.Engine(ctx, mount)
	if err != nil {
		return nil, h.s.grpcError("kv", err)
	}
	ke, ok := eng.(kvStore)
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "mount %s is not a kv engine", mount)
	}
	return ke, nil
}

func kvVersion(v kv.VersionInfo) *sigilv1.KVVersion {
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

// kvAuditField is the audit key of a secret's field: prefixed so a field
// named "path" or "cas" cannot pass for the request's own.
func kvAuditField(name string) string { return "data." + name }

// kvAuditRequest is what the audit records of a kv call's request: the
// path, version or CAS in clear, field names in clear and field values
// only as HMACs under the audit log's key. Other calls record nothing
// here (their path and decision are in the record already).
func kvAuditRequest(req any) map[string]audit.Value {
	switch m := req.(type) {
	case *sigilv1.KVWriteRequest:
		out := make(map[string]audit.Value, len(m.GetData())+3)
		out["mount"], out["path"] = audit.Plain(m.GetMount()), audit.Plain(m.GetPath())
		if m.Cas != nil {
			out["cas"] = audit.Plain(strconv.FormatInt(m.GetCas(), 10))
		}
		for k, v := range m.GetData() {
			out[kvAuditField(k)] = audit.Secret(string(v))
		}
		for _, k := range m.GetRemove() {
			out["remove."+k] = audit.Plain("removed")
		}
		return out
	case *sigilv1.KVGetRequest:
		return map[string]audit.Value{"mount": audit.Plain(m.GetMount()), "path": audit.Plain(m.GetPath()),
			"version": audit.Plain(strconv.FormatInt(m.GetVersion(), 10))}
	}
	return nil
}

// kvAuditResponse records, for the audit, the version a kv call produced
// or read and, for a read, each returned field's name with the HMAC of
// its value: the reply itself is sealed to the recipient, so the audit
// can still show which values were disclosed without holding them.
func kvAuditResponse(ctx context.Context, version int, data map[string][]byte) {
	r := requestFrom(ctx)
	if r == nil {
		return
	}
	out := make(map[string]audit.Value, len(data)+1)
	out["version"] = audit.Plain(strconv.Itoa(version))
	for k, v := range data {
		out[kvAuditField(k)] = audit.Secret(string(v))
	}
	r.response = out
}

func (h kvService) Put(ctx context.Context, req *sigilv1.KVWriteRequest) (*sigilv1.KVVersion, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	v, err := e.Put(ctx, req.GetPath(), req.GetData(), cas(req.Cas))
	if err != nil {
		return nil, h.s.grpcError("kv put", err)
	}
	kvAuditResponse(ctx, v.Version, nil)
	return kvVersion(*v), nil
}

func (h kvService) Patch(ctx context.Context, req *sigilv1.KVWriteRequest) (*sigilv1.KVVersion, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	v, err := e.Patch(ctx, req.GetPath(), req.GetData(), req.GetRemove(), cas(req.Cas))
	if err != nil {
		return nil, h.s.grpcError("kv patch", err)
	}
	kvAuditResponse(ctx, v.Version, nil)
	return kvVersion(*v), nil
}

func (h kvService) Get(ctx context.Context, req *sigilv1.KVGetRequest) (*sigilv1.KVGetResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	// Resolve the recipient first: a value nobody can receive is never opened.
	to, err := h.s.core.Destination(ctx, recipientRef(req.GetRecipient()), 0)
	if err != nil {
		return nil, err
	}
	sec, err := e.Get(ctx, req.GetPath(), int(req.GetVersion()))
	if err != nil {
		return nil, h.s.grpcError("kv get", err)
	}
	data := make(map[string]string, len(sec.Data))
	for k, v := range sec.Data {
		data[k] = base64.StdEncoding.EncodeToString(v)
	}
	kvAuditResponse(ctx, sec.Version, sec.Data)
	sec.Wipe()
	d, err := h.s.core.Deliver(ctx, to, core.Secret{BindingID: KVEnvelopeID(req.GetMount(), req.GetPath()), Data: data}, nil)
	if err != nil {
		return nil, err
	}
	wire := d.Envelope
	return &sigilv1.KVGetResponse{Version: kvVersion(sec.VersionInfo), Envelope: wire}, nil
}

func (h kvService) List(ctx context.Context, req *sigilv1.KVListRequest) (*sigilv1.KVListResponse, error) {
	prefix := req.GetPrefix()
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	keys, next, err := e.List(ctx, prefix, req.GetAfter(), int(req.GetLimit()))
	if err != nil {
		return nil, h.s.grpcError("kv list", err)
	}
	return &sigilv1.KVListResponse{Keys: keys, Next: next}, nil
}

func ints(vs []int64) []int {
	out := make([]int, len(vs))
	for i, v := range vs {
		out[i] = int(v)
	}
	return out
}

func (h kvService) Delete(ctx context.Context, req *sigilv1.KVVersionsRequest) (*sigilv1.KVVersionsResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	n, err := e.Delete(ctx, req.GetPath(), ints(req.GetVersions()))
	if err != nil {
		return nil, h.s.grpcError("kv delete", err)
	}
	return &sigilv1.KVVersionsResponse{Changed: int64(n)}, nil
}

func (h kvService) Undelete(ctx context.Context, req *sigilv1.KVVersionsRequest) (*sigilv1.KVVersionsResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	n, err := e.Undelete(ctx, req.GetPath(), ints(req.GetVersions()))
	if err != nil {
		return nil, h.s.grpcError("kv undelete", err)
	}
	return &sigilv1.KVVersionsResponse{Changed: int64(n)}, nil
}

func (h kvService) Destroy(ctx context.Context, req *sigilv1.KVVersionsRequest) (*sigilv1.KVVersionsResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	n, err := e.Destroy(ctx, req.GetPath(), ints(req.GetVersions()))
	if err != nil {
		return nil, h.s.grpcError("kv destroy", err)
	}
	return &sigilv1.KVVersionsResponse{Changed: int64(n)}, nil
}

func (h kvService) Rollback(ctx context.Context, req *sigilv1.KVRollbackRequest) (*sigilv1.KVVersion, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	v, err := e.Rollback(ctx, req.GetPath(), int(req.GetVersion()), cas(req.Cas))
	if err != nil {
		return nil, h.s.grpcError("kv rollback", err)
	}
	return kvVersion(*v), nil
}

func (h kvService) metadata(ctx context.Context, e kvStore, path string) (*sigilv1.KVMetadata, error) {
	m, err := e.ReadMetadata(ctx, path)
	if err != nil {
		return nil, h.s.grpcError("kv metadata", err)
	}
	out := &sigilv1.KVMetadata{Path: m.Path, CurrentVersion: int64(m.CurrentVersion), OldestVersion: int64(m.OldestVersion),
		MaxVersions: int64(m.MaxVersions), CasRequired: m.CASRequired, DeleteVersionAfterSeconds: int64(m.DeleteVersionAfter / time.Second),
		Custom: m.Custom, CreatedAtUnix: m.CreatedAt.Unix(), UpdatedAtUnix: m.UpdatedAt.Unix()}
	for _, v := range m.Versions {
		out.Versions = append(out.Versions, kvVersion(v))
	}
	return out, nil
}

func (h kvService) ReadMetadata(ctx context.Context, req *sigilv1.KVPathRequest) (*sigilv1.KVMetadata, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	return h.metadata(ctx, e, req.GetPath())
}

func (h kvService) WriteMetadata(ctx context.Context, req *sigilv1.KVWriteMetadataRequest) (*sigilv1.KVMetadata, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	var u kv.MetadataUpdate
	if req.MaxVersions != nil {
		n := int(req.GetMaxVersions())
		u.MaxVersions = &n
	}
	u.CASRequired = req.CasRequired
	if req.DeleteVersionAfterSeconds != nil {
		s := req.GetDeleteVersionAfterSeconds()
		if s < 0 || s > int64(100*365*24*3600) {
			return nil, status.Errorf(codes.InvalidArgument, "delete_version_after %ds is out of range", s)
		}
		d := time.Duration(s) * time.Second
		u.DeleteVersionAfter = &d
	}
	if req.GetReplaceCustom() {
		u.Custom = req.GetCustom()
		if u.Custom == nil {
			u.Custom = map[string]string{}
		}
	}
	if err := e.WriteMetadata(ctx, req.GetPath(), u); err != nil {
		return nil, h.s.grpcError("kv metadata put", err)
	}
	return h.metadata(ctx, e, req.GetPath())
}

func (h kvService) DeleteMetadata(ctx context.Context, req *sigilv1.KVPathRequest) (*sigilv1.KVDeleteMetadataResponse, error) {
	e, err := h.engine(ctx, req.GetMount())
	if err != nil {
		return nil, err
	}
	if err := e.DeleteMetadata(ctx, req.GetPath()); err != nil {
		return nil, h.s.grpcError("kv metadata delete", err)
	}
	return &sigilv1.KVDeleteMetadataResponse{}, nil
}
