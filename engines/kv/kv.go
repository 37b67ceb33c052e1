// Package kv is the "kv" engine: static secrets kept with the semantics of
// Vault's KV version 2. A secret is a map of fields whose values are
// arbitrary bytes; every write makes a new version, old versions can be
// soft-deleted, undeleted, destroyed (their ciphertext removed) or rolled
// back to, and check-and-set (CAS) prevents lost updates.
//
// Versions live in their own table (storage.KV), each value sealed by the
// barrier under SealKind with an id binding mount, path and version
// (SealID), so a row copied to another path, version or mount does not
// open. The engine mints no leases; the server calls its methods directly.
package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/storage"
)

// Type is the engine type name.
const Type = "kv"

// SealKind is the barrier record kind of kv values and custom metadata.
const SealKind = "kv"

// SealID is the barrier id of a version's value: mount and path cannot
// contain '#', so the id names exactly one version of one secret.
func SealID(mount, path string, version int) string {
	return mount + "#" + path + "#v" + strconv.Itoa(version)
}

// CustomSealID is the barrier id of a secret's custom metadata.
func CustomSealID(mount, path string) string { return mount + "#" + path + "#custom" }

// Limits on untrusted input.
const (
	DefaultMaxValueBytes = 1 << 20 // a secret's fields, names and values together
	MaxMaxValueBytes     = 2 << 20 // the configurable ceiling: base64 in the envelope stays under its 4 MiB
	MaxPathLen           = 512
	MaxFields            = 256
	MaxFieldName         = 256
	DefaultMaxVersions   = 10
	MaxCustomKeys        = 64
	MaxCustomKey         = 128
	MaxCustomValue       = 512
	maxWriteRetries      = 20
)

// Configuration keys (sigil engine configure MOUNT key=value).
const (
	KeyMaxVersions        = "max_versions"
	KeyCASRequired        = "cas_required"
	KeyDeleteVersionAfter = "delete_version_after"
	KeyMaxValueBytes      = "max_value_bytes"
)

// Errors callers branch on.
var (
	ErrNotFound    = errors.New("kv: secret not found")
	ErrDeleted     = errors.New("kv: version is deleted (undelete restores it)")
	ErrDestroyed   = errors.New("kv: version is destroyed")
	ErrCASMismatch = errors.New("kv: check-and-set version does not match the current version")
	ErrCASRequired = errors.New("kv: check-and-set is required for this secret (pass --cas N)")
	ErrTooLarge    = errors.New("kv: too large")
)

// Registrar returns the registration of the kv engine type: its engines
// keep their versions in st, sealed by sealer.
func Registrar(st storage.KV, sealer engines.Sealer) func(*engines.Registry) error {
	return func(reg *engines.Registry) error {
		return reg.Register(Type, func(env engines.Env) (engines.Engine, error) { return New(env, st, sealer) })
	}
}

// config is a mount's settings.
type config struct {
	maxVersions        int
	casRequired        bool
	deleteVersionAfter time.Duration
	maxValueBytes      int
}

func defaultConfig() config {
	return config{maxVersions: DefaultMaxVersions, maxValueBytes: DefaultMaxValueBytes}
}

// Engine is one mounted kv engine.
type Engine struct {
	mount  string
	st     storage.KV
	sealer engines.Sealer
	log    *slog.Logger
	now    func() time.Time

	mu  sync.RWMutex
	cfg config
}

// New builds an engine for env.
func New(env engines.Env, st storage.KV, sealer engines.Sealer) (*Engine, error) {
	if st == nil || sealer == nil {
		return nil, fmt.Errorf("%w: kv needs storage and a barrier", engines.ErrNotConfigured)
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{mount: env.Mount, st: st, sealer: sealer, log: log, now: time.Now, cfg: defaultConfig()}, nil
}

// ---- engines.Engine: kv implements only the base interface; it mints no
// leased secrets, so the mounts refuse roles and creds on it.

// Configure implements engines.Engine: the mount's defaults.
func (e *Engine) Configure(_ context.Context, in map[string]string) (map[string]string, error) {
	c := defaultConfig()
	for k, v := range in {
		var err error
		switch k {
		case KeyMaxVersions:
			c.maxVersions, err = strconv.Atoi(v)
			if err == nil && (c.maxVersions < 1 || c.maxVersions > 1000) {
				err = errors.New("want 1 to 1000")
			}
		case KeyCASRequired:
			c.casRequired, err = strconv.ParseBool(v)
		case KeyDeleteVersionAfter:
			c.deleteVersionAfter, err = time.ParseDuration(v)
			if err == nil && c.deleteVersionAfter < 0 {
				err = errors.New("must not be negative")
			}
		case KeyMaxValueBytes:
			c.maxValueBytes, err = strconv.Atoi(v)
			if err == nil && (c.maxValueBytes < 1 || c.maxValueBytes > MaxMaxValueBytes) {
				err = fmt.Errorf("want 1 to %d", MaxMaxValueBytes)
			}
		default:
			return nil, fmt.Errorf("%w: kv: unknown setting %q (want %s, %s, %s or %s)", engines.ErrInvalidConfig, k,
				KeyMaxVersions, KeyCASRequired, KeyDeleteVersionAfter, KeyMaxValueBytes)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: kv: %s=%q: %v", engines.ErrInvalidConfig, k, v, err)
		}
	}
	e.mu.Lock()
	e.cfg = c
	e.mu.Unlock()
	return map[string]string{
		KeyMaxVersions: strconv.Itoa(c.maxVersions), KeyCASRequired: strconv.FormatBool(c.casRequired),
		KeyDeleteVersionAfter: c.deleteVersionAfter.String(), KeyMaxValueBytes: strconv.Itoa(c.maxValueBytes),
	}, nil
}

func (e *Engine) config() config {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.cfg
}

// Close implements engines.Engine.
func (e *Engine) Close() error { return nil }

// ---- validation

func validChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("_.-@:+=,~", c) >= 0
}

// CheckPath validates a secret path: 1 to MaxPathLen bytes of segments
// joined by '/', each non-empty, not "." or "..", of [A-Za-z0-9_.-@:+=,~].
// '#' (the seal id separator), '*' (a policy wildcard) and '{' (a policy
// template) can never occur.
func CheckPath(p string) error {
	if p == "" {
		return fmt.Errorf("%w: secret path is empty", engines.ErrInvalidPath)
	}
	if len(p) > MaxPathLen {
		return fmt.Errorf("%w: secret path is %d bytes, longer than %d", engines.ErrInvalidPath, len(p), MaxPathLen)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: secret path %q has an empty, \".\" or \"..\" segment", engines.ErrInvalidPath, p)
		}
		for i := 0; i < len(seg); i++ {
			if !validChar(seg[i]) {
				return fmt.Errorf("%w: secret path %q: character %q is not allowed (use A-Z a-z 0-9 and _.-@:+=,~ between slashes)",
					engines.ErrInvalidPath, p, seg[i])
			}
		}
	}
	return nil
}

// CheckPrefix validates a list prefix: "" or a path followed by '/'.
func CheckPrefix(p string) error {
	if p == "" {
		return nil
	}
	if !strings.HasSuffix(p, "/") {
		return fmt.Errorf("%w: list prefix %q must end with '/'", engines.ErrInvalidPath, p)
	}
	return CheckPath(strings.TrimSuffix(p, "/"))
}

func (e *Engine) checkData(data map[string][]byte, c config) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: a secret needs at least one field (name=value)", engines.ErrInvalidRequest)
	}
	if len(data) > MaxFields {
		return fmt.Errorf("%w: %d fields, at most %d", ErrTooLarge, len(data), MaxFields)
	}
	total := 0
	for k, v := range data {
		if k == "" || len(k) > MaxFieldName || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("%w: field name %q: 1 to %d bytes, without '=' or NUL", engines.ErrInvalidRequest, k, MaxFieldName)
		}
		total += len(k) + len(v)
	}
	if total > c.maxValueBytes {
		return fmt.Errorf("%w: secret is %d bytes, the mount allows %d (%s)", ErrTooLarge, total, c.maxValueBytes, KeyMaxValueBytes)
	}
	return nil
}

// ---- values

// VersionInfo describes one version without its value.
type VersionInfo struct {
	Version   int
	CreatedAt time.Time
	DeletedAt time.Time // zero: not deleted
	Destroyed bool
}

// Secret is a version's fields and description.
type Secret struct {
	Data map[string][]byte
	VersionInfo
}

// Wipe clears the secret's values.
func (s *Secret) Wipe() {
	for _, v := range s.Data {
		clear(v)
	}
}

func (e *Engine) seal(ctx context.Context, path string, version int, data map[string][]byte) ([]byte, error) {
	pt, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	sealed, err := e.sealer.Seal(ctx, SealKind, SealID(e.mount, path, version), pt)
	if err != nil {
		return nil, fmt.Errorf("kv: seal %s version %d: %w", path, version, err)
	}
	return sealed, nil
}

func (e *Engine) open(ctx context.Context, v *storage.KVVersion) (map[string][]byte, error) {
	pt, err := e.sealer.Open(ctx, SealKind, SealID(e.mount, v.Path, v.Version), v.Sealed)
	if err != nil {
		return nil, fmt.Errorf("kv: open %s version %d: %w", v.Path, v.Version, err)
	}
	defer clear(pt)
	var data map[string][]byte
	if err := json.Unmarshal(pt, &data); err != nil {
		return nil, fmt.Errorf("kv: decode %s version %d: %w", v.Path, v.Version, err)
	}
	return data, nil
}

// meta returns the path's metadata, or a fresh one when there is none.
func (e *Engine) meta(ctx context.Context, path string) (*storage.KVMeta, bool, error) {
	m, err := e.st.GetMeta(ctx, e.mount, path)
	if errors.Is(err, storage.ErrNotFound) {
		return &storage.KVMeta{Mount: e.mount, Path: path}, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return m, true, nil
}

func keep(m *storage.KVMeta, c config) int {
	if m.MaxVersions > 0 {
		return m.MaxVersions
	}
	return c.maxVersions
}

// write stores data as the next version. With cas set it succeeds only if
// the current version is *cas; without, it retries on a concurrent write
// unless the secret requires CAS. base, when set, computes the data from
// the current version (patch, rollback) on each attempt.
func (e *Engine) write(ctx context.Context, path string, cas *int, data func(ctx context.Context, m *storage.KVMeta) (map[string][]byte, error)) (*VersionInfo, error) {
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	c := e.config()
	for range maxWriteRetries {
		m, _, err := e.meta(ctx, path)
		if err != nil {
			return nil, err
		}
		if cas == nil && (m.CASRequired || c.casRequired) {
			return nil, fmt.Errorf("%w: %s", ErrCASRequired, path)
		}
		if cas != nil && *cas != m.CurrentVersion {
			return nil, fmt.Errorf("%w: %s: --cas %d, current version %d", ErrCASMismatch, path, *cas, m.CurrentVersion)
		}
		d, err := data(ctx, m)
		if err != nil {
			return nil, err
		}
		if err := e.checkData(d, c); err != nil {
			return nil, err
		}
		next := m.CurrentVersion + 1
		sealed, err := e.seal(ctx, path, next, d)
		if err != nil {
			return nil, err
		}
		v := &storage.KVVersion{Mount: e.mount, Path: path, Version: next, Sealed: sealed, CreatedAt: e.now().UTC()}
		err = e.st.WriteVersion(ctx, v, keep(m, c))
		if errors.Is(err, storage.ErrConflict) {
			if cas != nil {
				return nil, fmt.Errorf("%w: %s: another write took version %d first", ErrCASMismatch, path, next)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		e.log.Debug("kv secret written", "path", path, "version", next)
		return &VersionInfo{Version: next, CreatedAt: v.CreatedAt}, nil
	}
	return nil, fmt.Errorf("kv: %s: written concurrently too often: %w", path, storage.ErrConflict)
}

// Put stores data as a new version. cas, when not nil, is the version the
// caller expects to be current (0: the secret must not exist yet).
func (e *Engine) Put(ctx context.Context, path string, data map[string][]byte, cas *int) (*VersionInfo, error) {
	return e.write(ctx, path, cas, func(context.Context, *storage.KVMeta) (map[string][]byte, error) { return data, nil })
}

// Patch merges fields into the current version as a new version; remove
// lists fields to drop.
func (e *Engine) Patch(ctx context.Context, path string, data map[string][]byte, remove []string, cas *int) (*VersionInfo, error) {
	return e.write(ctx, path, cas, func(ctx context.Context, m *storage.KVMeta) (map[string][]byte, error) {
		if m.CurrentVersion == 0 {
			return nil, fmt.Errorf("%w: %s (patch needs an existing secret; use put)", ErrNotFound, path)
		}
		cur, err := e.read(ctx, m, m.CurrentVersion)
		if err != nil {
			return nil, err
		}
		out := cur.Data
		maps.Copy(out, data)
		for _, k := range remove {
			delete(out, k)
		}
		return out, nil
	})
}

// Rollback writes version's value as a new current version.
func (e *Engine) Rollback(ctx context.Context, path string, version int, cas *int) (*VersionInfo, error) {
	if version < 1 {
		return nil, fmt.Errorf("%w: rollback needs a version (>= 1)", engines.ErrInvalidRequest)
	}
	return e.write(ctx, path, cas, func(ctx context.Context, m *storage.KVMeta) (map[string][]byte, error) {
		old, err := e.read(ctx, m, version)
		if err != nil {
			return nil, err
		}
		return old.Data, nil
	})
}

// deleted reports whether a version reads as deleted: deleted by hand, or
// older than delete_version_after.
func (e *Engine) deleted(v *storage.KVVersion, m *storage.KVMeta, c config) bool {
	if !v.DeletedAt.IsZero() {
		return true
	}
	dva := m.DeleteVersionAfter
	if dva == 0 {
		dva = c.deleteVersionAfter
	}
	return dva > 0 && e.now().After(v.CreatedAt.Add(dva))
}

func (e *Engine) read(ctx context.Context, m *storage.KVMeta, version int) (*Secret, error) {
	if version == 0 {
		version = m.CurrentVersion
	}
	if version == 0 {
		return nil, fmt.Errorf("%w: %s has no version", ErrNotFound, m.Path)
	}
	v, err := e.st.GetVersion(ctx, e.mount, m.Path, version)
	if errors.Is(err, storage.ErrNotFound) {
		v, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	return e.readable(ctx, m, version, v)
}

// readable checks and opens version (0: the current one) of m, stored as v
// (nil: absent): a destroyed or deleted version is refused.
func (e *Engine) readable(ctx context.Context, m *storage.KVMeta, version int, v *storage.KVVersion) (*Secret, error) {
	if version == 0 {
		version = m.CurrentVersion
	}
	if version == 0 {
		return nil, fmt.Errorf("%w: %s has no version", ErrNotFound, m.Path)
	}
	if v == nil {
		return nil, fmt.Errorf("%w: %s version %d (never written, or pruned by max_versions)", ErrNotFound, m.Path, version)
	}
	info := VersionInfo{Version: v.Version, CreatedAt: v.CreatedAt, DeletedAt: v.DeletedAt, Destroyed: v.Destroyed}
	if v.Destroyed {
		return nil, fmt.Errorf("%w: %s version %d; its value is gone", ErrDestroyed, m.Path, version)
	}
	if e.deleted(v, m, e.config()) {
		return nil, fmt.Errorf("%w: %s version %d", ErrDeleted, m.Path, version)
	}
	data, err := e.open(ctx, v)
	if err != nil {
		return nil, err
	}
	return &Secret{Data: data, VersionInfo: info}, nil
}

// Get reads a version (0: the current one).
func (e *Engine) Get(ctx context.Context, path string, version int) (*Secret, error) {
	sec, _, err := e.GetInMount(ctx, path, version)
	return sec, err
}

// GetInMount is Get, and also returns the row of the engine's mount as the
// same query saw it (nil: no mount row), so a caller that found this
// engine without reading the mount can check, with the snapshot the
// secret came from, that the mount still exists unchanged
// (engines.Mounts.Current) before it uses the secret or the error.
func (e *Engine) GetInMount(ctx context.Context, path string, version int) (*Secret, *storage.Mount, error) {
	if err := CheckPath(path); err != nil {
		return nil, nil, err
	}
	if version < 0 {
		return nil, nil, fmt.Errorf("%w: version %d", engines.ErrInvalidRequest, version)
	}
	r, err := e.st.Read(ctx, e.mount, path, version)
	if err != nil {
		return nil, nil, err
	}
	if r.Meta == nil {
		return nil, r.Mount, fmt.Errorf("%w: %s", ErrNotFound, path)
	}
	sec, err := e.readable(ctx, r.Meta, version, r.Version)
	return sec, r.Mount, err
}

func checkVersions(op string, versions []int) error {
	for _, v := range versions {
		if v < 1 {
			return fmt.Errorf("%w: %s: version %d (versions start at 1)", engines.ErrInvalidRequest, op, v)
		}
	}
	return nil
}

// existing returns the path's metadata, or ErrNotFound.
func (e *Engine) existing(ctx context.Context, path string) (*storage.KVMeta, error) {
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	m, ok, err := e.meta(ctx, path)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, path)
	}
	return m, nil
}

// Delete soft-deletes versions (none: the current one); undelete restores
// them. It returns how many versions changed.
func (e *Engine) Delete(ctx context.Context, path string, versions []int) (int, error) {
	m, err := e.existing(ctx, path)
	if err != nil {
		return 0, err
	}
	if len(versions) == 0 {
		if m.CurrentVersion == 0 {
			return 0, fmt.Errorf("%w: %s has no version", ErrNotFound, path)
		}
		versions = []int{m.CurrentVersion}
	}
	if err := checkVersions("delete", versions); err != nil {
		return 0, err
	}
	return e.st.SetDeleted(ctx, e.mount, path, versions, e.now())
}

// Undelete restores soft-deleted versions.
func (e *Engine) Undelete(ctx context.Context, path string, versions []int) (int, error) {
	if len(versions) == 0 {
		return 0, fmt.Errorf("%w: undelete needs the versions to restore", engines.ErrInvalidRequest)
	}
	if err := checkVersions("undelete", versions); err != nil {
		return 0, err
	}
	if _, err := e.existing(ctx, path); err != nil {
		return 0, err
	}
	return e.st.SetDeleted(ctx, e.mount, path, versions, time.Time{})
}

// Destroy removes the versions' ciphertext for good.
func (e *Engine) Destroy(ctx context.Context, path string, versions []int) (int, error) {
	if len(versions) == 0 {
		return 0, fmt.Errorf("%w: destroy needs the versions to destroy (--versions 1,2)", engines.ErrInvalidRequest)
	}
	if err := checkVersions("destroy", versions); err != nil {
		return 0, err
	}
	if _, err := e.existing(ctx, path); err != nil {
		return 0, err
	}
	n, err := e.st.Destroy(ctx, e.mount, path, versions)
	if err == nil {
		e.log.Info("kv versions destroyed", "path", path, "versions", versions, "count", n)
	}
	return n, err
}

// List returns the keys directly under prefix ("" or "a/b/"): secret names,
// and folder names ending in '/', sorted, and the cursor of the next page.
func (e *Engine) List(ctx context.Context, prefix, after string, limit int) ([]string, string, error) {
	if err := CheckPrefix(prefix); err != nil {
		return nil, "", err
	}
	if len(after) > MaxPathLen+1 || strings.ContainsRune(after, 0) {
		return nil, "", fmt.Errorf("%w: list cursor", engines.ErrInvalidRequest)
	}
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	var keys []string
	cursor := after
	for {
		page, next, err := e.st.List(ctx, storage.KVFilter{Mount: e.mount, Prefix: prefix, After: cursor, Limit: limit})
		if err != nil {
			return nil, "", err
		}
		for _, p := range page {
			if p <= cursor {
				continue // inside a folder already listed
			}
			rest := p[len(prefix):]
			key, resume := rest, p
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				// Every path in the folder sorts below this: path bytes
				// are all below 0x7f.
				key, resume = rest[:i+1], prefix+rest[:i+1]+"\x7f"
			}
			if len(keys) == limit {
				return keys, cursor, nil // a further key exists
			}
			keys = append(keys, key)
			cursor = resume
		}
		if next == "" {
			return keys, "", nil
		}
	}
}

// ---- metadata

// Metadata describes a secret and its versions.
type Metadata struct {
	Path               string
	CurrentVersion     int
	OldestVersion      int
	MaxVersions        int // 0: the mount's default
	CASRequired        bool
	DeleteVersionAfter time.Duration
	Custom             map[string]string
	CreatedAt          time.Time
	UpdatedAt          time.Time
	Versions           []VersionInfo
}

// ReadMetadata returns a secret's metadata.
func (e *Engine) ReadMetadata(ctx context.Context, path string) (*Metadata, error) {
	m, err := e.existing(ctx, path)
	if err != nil {
		return nil, err
	}
	out := &Metadata{Path: path, CurrentVersion: m.CurrentVersion, MaxVersions: m.MaxVersions, CASRequired: m.CASRequired,
		DeleteVersionAfter: m.DeleteVersionAfter, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt}
	if out.Custom, err = e.openCustom(ctx, m); err != nil {
		return nil, err
	}
	vs, err := e.st.ListVersions(ctx, e.mount, path)
	if err != nil {
		return nil, err
	}
	c := e.config()
	for _, v := range vs {
		info := VersionInfo{Version: v.Version, CreatedAt: v.CreatedAt, DeletedAt: v.DeletedAt, Destroyed: v.Destroyed}
		if info.DeletedAt.IsZero() && !v.Destroyed && e.deleted(v, m, c) {
			info.DeletedAt = v.CreatedAt.Add(max(m.DeleteVersionAfter, c.deleteVersionAfter))
		}
		out.Versions = append(out.Versions, info)
	}
	if len(vs) > 0 {
		out.OldestVersion = vs[0].Version
	}
	return out, nil
}

func (e *Engine) openCustom(ctx context.Context, m *storage.KVMeta) (map[string]string, error) {
	if len(m.SealedCustom) == 0 {
		return nil, nil
	}
	pt, err := e.sealer.Open(ctx, SealKind, CustomSealID(e.mount, m.Path), m.SealedCustom)
	if err != nil {
		return nil, fmt.Errorf("kv: open custom metadata of %s: %w", m.Path, err)
	}
	var out map[string]string
	if err := json.Unmarshal(pt, &out); err != nil {
		return nil, fmt.Errorf("kv: decode custom metadata of %s: %w", m.Path, err)
	}
	return out, nil
}

// MetadataUpdate changes a secret's settings; nil fields are left alone.
type MetadataUpdate struct {
	MaxVersions        *int
	CASRequired        *bool
	DeleteVersionAfter *time.Duration
	// Custom replaces the custom metadata when not nil (empty clears it).
	Custom map[string]string
}

// WriteMetadata applies u, creating the metadata if the secret has none.
func (e *Engine) WriteMetadata(ctx context.Context, path string, u MetadataUpdate) error {
	if err := CheckPath(path); err != nil {
		return err
	}
	if n := u.MaxVersions; n != nil && (*n < 0 || *n > 1000) {
		return fmt.Errorf("%w: max_versions %d: want 0 (the mount's default) to 1000", engines.ErrInvalidRequest, *n)
	}
	if d := u.DeleteVersionAfter; d != nil && *d < 0 {
		return fmt.Errorf("%w: delete_version_after must not be negative", engines.ErrInvalidRequest)
	}
	if len(u.Custom) > MaxCustomKeys {
		return fmt.Errorf("%w: %d custom metadata keys, at most %d", ErrTooLarge, len(u.Custom), MaxCustomKeys)
	}
	for k, v := range u.Custom {
		if k == "" || len(k) > MaxCustomKey || len(v) > MaxCustomValue {
			return fmt.Errorf("%w: custom metadata %q: keys 1 to %d bytes, values at most %d", engines.ErrInvalidRequest, k, MaxCustomKey, MaxCustomValue)
		}
	}
	m, _, err := e.meta(ctx, path)
	if err != nil {
		return err
	}
	if u.MaxVersions != nil {
		m.MaxVersions = *u.MaxVersions
	}
	if u.CASRequired != nil {
		m.CASRequired = *u.CASRequired
	}
	if u.DeleteVersionAfter != nil {
		m.DeleteVersionAfter = *u.DeleteVersionAfter
	}
	if u.Custom != nil {
		m.SealedCustom = nil
		if len(u.Custom) > 0 {
			pt, err := json.Marshal(u.Custom)
			if err != nil {
				return err
			}
			if m.SealedCustom, err = e.sealer.Seal(ctx, SealKind, CustomSealID(e.mount, path), pt); err != nil {
				return fmt.Errorf("kv: seal custom metadata of %s: %w", path, err)
			}
		}
	}
	m.UpdatedAt = e.now().UTC()
	return e.st.PutMeta(ctx, m)
}

// DeleteMetadata removes a secret: its metadata and every version.
func (e *Engine) DeleteMetadata(ctx context.Context, path string) error {
	if err := CheckPath(path); err != nil {
		return err
	}
	if err := e.st.DeleteAll(ctx, e.mount, path); errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, path)
	} else if err != nil {
		return err
	}
	e.log.Info("kv secret deleted with all versions", "path", path)
	return nil
}

// ParseVersions parses "1,2,5".
func ParseVersions(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: versions %q: want a comma-separated list of numbers >= 1", engines.ErrInvalidRequest, s)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
