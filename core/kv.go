package core

import (
	"context"
	"encoding/base64"
	"strconv"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
)

// KVStore is what the key-value use cases need of a mount's engine: found
// by interface, so no layer above names the concrete engine type.
type KVStore interface {
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

// KV returns mount's key-value engine.
func (c *Core) KV(ctx context.Context, mount string) (KVStore, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	e, err := engines.Capability[KVStore](ctx, u.Mounts, mount, "key-value operations need a kv mount")
	return e, OpError("kv", err)
}

// KVEnvelopeID is the id a kv read's envelope is bound to.
func KVEnvelopeID(mount, path string) string { return "kv:" + mount + "/data/" + path }

// KVWrite is a write (or, with Patch, a merge) of a secret's fields.
type KVWrite struct {
	Mount, Path string
	Data        map[string][]byte
	Remove      []string // Patch only
	CAS         *int
	Patch       bool
}

// WriteKV writes a new version and records it for the audit.
func (c *Core) WriteKV(ctx context.Context, caller *Caller, w KVWrite) (*kv.VersionInfo, error) {
	e, err := c.KV(ctx, w.Mount)
	if err != nil {
		return nil, err
	}
	var v *kv.VersionInfo
	if w.Patch {
		v, err = e.Patch(ctx, w.Path, w.Data, w.Remove, w.CAS)
	} else {
		v, err = e.Put(ctx, w.Path, w.Data, w.CAS)
	}
	if err != nil {
		return nil, OpError("kv write", err)
	}
	caller.auditKVResponse(v.Version, nil)
	return v, nil
}

// ReadKV reads a version of a secret (0: the latest) and delivers it sealed
// to ref; the audit records each field's name with the HMAC of its value,
// so it shows what was disclosed without holding it.
func (c *Core) ReadKV(ctx context.Context, caller *Caller, mount, path string, version int, ref *RecipientRef) (*kv.VersionInfo, *Delivery, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, nil, err
	}
	running, cached := u.Mounts.Cached(mount)
	if !cached {
		// Nothing runs for the mount here yet: resolve it now (reading
		// its row), so an unknown mount is reported before the recipient.
		if _, err := c.KV(ctx, mount); err != nil {
			return nil, nil, err
		}
	}
	var info kv.VersionInfo
	d, err := c.deliverRead(ctx, ref, KVEnvelopeID(mount, path), func() (map[string]string, error) {
		sec, err := c.getKV(ctx, u, running, mount, path, version)
		if err != nil {
			return nil, err
		}
		defer sec.Wipe()
		info = sec.VersionInfo
		caller.auditKVResponse(sec.Version, sec.Data)
		data := make(map[string]string, len(sec.Data))
		for k, v := range sec.Data {
			data[k] = base64.StdEncoding.EncodeToString(v)
		}
		return data, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return &info, d, nil
}

// kvSnapshotReader is a kv engine whose read also returns the mount row
// its query saw (kv.Engine.GetInMount).
type kvSnapshotReader interface {
	GetInMount(ctx context.Context, path string, version int) (*kv.Secret, *storage.Mount, error)
}

// getKV reads a version of a secret. With the mount's engine already
// running here (running, from Mounts.Cached) it is one query that also
// returns the mount's row, and its result stands only if that row is the
// one the engine was built from (Mounts.Current): a mount disabled,
// re-enabled or reconfigured on this node or another, sharing the
// database, shows in the same snapshot as the secret. Otherwise, or with
// nothing running, the mount is resolved by reading its row first, as
// every other mount use does.
func (c *Core) getKV(ctx context.Context, u *Unsealed, running engines.Running, mount, path string, version int) (*kv.Secret, error) {
	if e, ok := running.Engine.(kvSnapshotReader); ok {
		sec, mt, err := e.GetInMount(ctx, path, version)
		if u.Mounts.Current(mount, running, mt) {
			return sec, OpError("kv get", err)
		}
		if sec != nil {
			sec.Wipe()
		}
	}
	e, err := c.KV(ctx, mount)
	if err != nil {
		return nil, err
	}
	sec, err := e.Get(ctx, path, version)
	return sec, OpError("kv get", err)
}

// AuditRequest is what the audit records of a kv write's request: the
// path and CAS in clear, field names in clear and field values only as
// HMACs under the audit log's key.
func (w KVWrite) AuditRequest() map[string]audit.Value {
	out := make(map[string]audit.Value, len(w.Data)+3)
	out["mount"], out["path"] = audit.Plain(w.Mount), audit.Plain(w.Path)
	if w.CAS != nil {
		out["cas"] = audit.Plain(strconv.Itoa(*w.CAS))
	}
	for k, v := range w.Data {
		out[KVAuditField(k)] = audit.Secret(string(v))
	}
	for _, k := range w.Remove {
		out["remove."+k] = audit.Plain("removed")
	}
	return out
}

// KVReadAuditRequest is what the audit records of a kv read's request.
func KVReadAuditRequest(mount, path string, version int64) map[string]audit.Value {
	return map[string]audit.Value{"mount": audit.Plain(mount), "path": audit.Plain(path),
		"version": audit.Plain(strconv.FormatInt(version, 10))}
}

// KVMetadataUpdate is a change to a secret's metadata as a caller asks for
// it; nil fields keep their value.
type KVMetadataUpdate struct {
	MaxVersions               *int64
	CASRequired               *bool
	DeleteVersionAfterSeconds *int64
	// ReplaceCustom replaces the custom metadata with Custom (nil: none).
	ReplaceCustom bool
	Custom        map[string]string
}

// WriteKVMetadata checks and applies u to the secret at path and returns
// its metadata as it now is.
func (c *Core) WriteKVMetadata(ctx context.Context, mount, path string, req KVMetadataUpdate) (*kv.Metadata, error) {
	u := kv.MetadataUpdate{CASRequired: req.CASRequired}
	if req.MaxVersions != nil {
		n := int(*req.MaxVersions)
		u.MaxVersions = &n
	}
	if req.DeleteVersionAfterSeconds != nil {
		d, err := DeleteVersionAfter(*req.DeleteVersionAfterSeconds)
		if err != nil {
			return nil, err
		}
		u.DeleteVersionAfter = &d
	}
	if req.ReplaceCustom {
		u.Custom = req.Custom
		if u.Custom == nil {
			u.Custom = map[string]string{}
		}
	}
	e, err := c.KV(ctx, mount)
	if err != nil {
		return nil, err
	}
	if err := e.WriteMetadata(ctx, path, u); err != nil {
		return nil, OpError("kv metadata put", err)
	}
	m, err := e.ReadMetadata(ctx, path)
	return m, OpError("kv metadata put", err)
}

// KVAuditField is the audit key of a secret's field: prefixed so a field
// named "path" or "cas" cannot pass for the request's own.
func KVAuditField(name string) string { return "data." + name }

// auditKVResponse records the version a kv call produced or read and the
// HMACs of what a read disclosed.
func (c *Caller) auditKVResponse(version int, data map[string][]byte) {
	if c == nil {
		return
	}
	out := make(map[string]audit.Value, len(data)+1)
	out["version"] = audit.Plain(strconv.Itoa(version))
	for k, v := range data {
		out[KVAuditField(k)] = audit.Secret(string(v))
	}
	c.AuditResponse = out
}

// maxDeleteVersionAfter bounds kv's automatic deletion delay.
const maxDeleteVersionAfter = 100 * 365 * 24 * time.Hour

// DeleteVersionAfter checks a kv metadata delay given in seconds.
func DeleteVersionAfter(seconds int64) (time.Duration, error) {
	if seconds < 0 || seconds > int64(maxDeleteVersionAfter/time.Second) {
		return 0, errs.Errorf(errs.InvalidArgument, "delete_version_after %ds is out of range", seconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

// deliverRead resolves the recipient first, then reads the secret and
// delivers it: a value nobody can receive is never read or made.
func (c *Core) deliverRead(ctx context.Context, ref *RecipientRef, bindingID string, read func() (map[string]string, error)) (*Delivery, error) {
	to, err := c.Destination(ctx, ref, 0)
	if err != nil {
		return nil, err
	}
	data, err := read()
	if err != nil {
		return nil, err
	}
	return c.Deliver(ctx, to, Secret{BindingID: bindingID, Data: data}, nil)
}
