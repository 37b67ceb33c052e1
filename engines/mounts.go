package engines

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// Sealer encrypts values bound to a record (kind, id); *barrier.Barrier
// satisfies it.
type Sealer interface {
	Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error)
}

// SealKind is the barrier record kind of a mount's document; the id is the
// mount path, so a document cannot be moved to another mount.
const SealKind = "engine-mount"

// KeyMaxLeases is the configuration and role key of the lease-count quota,
// handled by Mounts for every engine type (it is not passed to engines).
const KeyMaxLeases = "max_leases"

// mountDoc is everything a mount persists, sealed as one blob in
// storage.Mount.SealedConfig: engine configuration holds credentials, and
// keeping roles in the same document makes role writes one row update.
type mountDoc struct {
	Config    map[string]string  `json:"config,omitempty"`
	MaxLeases int                `json:"max_leases,omitempty"`
	Roles     map[string]roleDoc `json:"roles,omitempty"`
}

type roleDoc struct {
	Fields    map[string]string `json:"fields"`
	MaxLeases int               `json:"max_leases,omitempty"`
}

// MountInfo describes a mount.
type MountInfo struct {
	Path      string
	Type      string
	CreatedAt time.Time
}

// Binding is what the lease manager needs to mint under a role.
type Binding struct {
	Mount          string
	Type           string
	Engine         Leased
	Role           Role
	MountMaxLeases int // 0: unlimited
	RoleMaxLeases  int // 0: unlimited
}

// live is a running engine for a mount, valid while the stored blob's
// fingerprint is unchanged.
type live struct {
	typ string
	fp  [32]byte
	eng Engine
	doc *mountDoc
}

// Mounts manages engine mounts: it persists each mount's configuration and
// roles sealed in storage and keeps one running engine per mount. Other
// nodes sharing the database see changes because every use re-reads the
// mount row and rebuilds the engine when its sealed blob changed.
//
// Writes on one node are serialised by a mutex; two nodes writing roles of
// the same mount at the same instant may lose one update (last writer wins),
// which is acceptable for operator actions.
type Mounts struct {
	store  storage.Store
	sealer Sealer
	reg    *Registry
	logger *slog.Logger
	svc    Services

	wmu    sync.Mutex // serialises read-modify-write of mount documents
	mu     sync.Mutex // guards cache, building and closed; never held while an engine is built
	cache  map[string]*live
	closed bool
	// building serialises (re)building each mount's engine. Building can
	// wait on a backend (a database engine connects in Configure), so it
	// holds that mount's lock only: other mounts stay served meanwhile. A
	// lock is a one-slot channel so that a caller waiting for another's
	// build gives up when its context ends (the expiry worker bounds how
	// long it waits for any one mount).
	building map[string]buildLock
}

// buildLock is one mount's build lock.
type buildLock chan struct{}

// lock takes l, or fails when ctx ends first.
func (l buildLock) lock(ctx context.Context) error {
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l buildLock) unlock() { <-l }

// NewMounts returns a mount manager.
func NewMounts(store storage.Store, sealer Sealer, reg *Registry, svc Services, logger *slog.Logger) *Mounts {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Mounts{store: store, sealer: sealer, reg: reg, svc: svc, logger: logger, cache: map[string]*live{}, building: map[string]buildLock{}}
}

// checkName accepts one path segment.
func checkName(s string) error {
	if s == "" || len(s) > 64 || s == "." || s == ".." {
		return ErrInvalidPath
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return ErrInvalidPath
		}
	}
	return nil
}

// CheckPath validates a mount path: segments of [A-Za-z0-9_.-] joined by
// '/', at most 128 bytes.
func CheckPath(p string) error {
	if p == "" || len(p) > 128 {
		return fmt.Errorf("%w: mount path %q", ErrInvalidPath, p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if checkName(seg) != nil {
			return fmt.Errorf("%w: mount path %q", ErrInvalidPath, p)
		}
	}
	return nil
}

// reservedMountSegments are the first path segments no mount may take:
// the top-level prefixes of authorization paths (sys, leases, ca), the
// internal token mount (auth) and the ACME server (acme). A mount named
// "sys" would turn its creds path into an administrative one, and one named
// "ca" would put its paths beside the CA's own grants.
func reservedMountSegments() []string { return []string{"sys", "auth", "leases", "ca", "acme"} }

// CheckMountPath validates a path for a new mount: CheckPath, and a first
// segment that is not one of the API's reserved prefixes (compared without
// case, so "SYS" is refused too).
func CheckMountPath(p string) error {
	if err := CheckPath(p); err != nil {
		return err
	}
	first, _, _ := strings.Cut(p, "/")
	for _, r := range reservedMountSegments() {
		if strings.EqualFold(first, r) {
			return fmt.Errorf("%w: mount path %q: %q is reserved for Sigil's own API paths (reserved: %s); choose another mount name",
				ErrInvalidPath, p, first, strings.Join(reservedMountSegments(), ", "))
		}
	}
	return nil
}

// CheckRoleName validates a role name (one segment).
func CheckRoleName(n string) error {
	if checkName(n) != nil {
		return fmt.Errorf("%w: role name %q", ErrInvalidPath, n)
	}
	return nil
}

func (m *Mounts) open(ctx context.Context, mt *storage.Mount) (*mountDoc, error) {
	doc := &mountDoc{}
	if len(mt.SealedConfig) == 0 {
		return doc, nil
	}
	pt, err := m.sealer.Open(ctx, SealKind, mt.Path, mt.SealedConfig)
	if err != nil {
		return nil, fmt.Errorf("engines: open mount %s: %w", mt.Path, err)
	}
	defer clear(pt)
	if err := json.Unmarshal(pt, doc); err != nil {
		return nil, fmt.Errorf("engines: decode mount %s: %w", mt.Path, err)
	}
	return doc, nil
}

func (m *Mounts) seal(ctx context.Context, path string, doc *mountDoc) ([]byte, error) {
	pt, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return m.sealer.Seal(ctx, SealKind, path, pt)
}

func (m *Mounts) getMount(ctx context.Context, path string) (*storage.Mount, error) {
	mt, err := m.store.Mounts().Get(ctx, path)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrMountNotFound, path)
	}
	if err != nil {
		return nil, fmt.Errorf("engines: mount %s: %w", path, err)
	}
	return mt, nil
}

// get returns the running engine for path, (re)building it if the stored
// mount changed since it was built.
func (m *Mounts) get(ctx context.Context, path string) (*live, error) {
	mt, err := m.getMount(ctx, path)
	if err != nil {
		return nil, err
	}
	fp := sha256.Sum256(mt.SealedConfig)
	current := func(l *live) bool { return l != nil && l.typ == mt.Type && l.fp == fp }
	m.mu.Lock()
	cur := m.cache[path]
	b := m.building[path]
	if b == nil {
		b = make(buildLock, 1)
		m.building[path] = b
	}
	m.mu.Unlock()
	if current(cur) {
		return cur, nil
	}
	if err := b.lock(ctx); err != nil {
		return nil, fmt.Errorf("engines: mount %s: waiting for its engine: %w", path, err)
	}
	defer b.unlock()
	m.mu.Lock()
	cur = m.cache[path] // another caller may have built it meanwhile
	m.mu.Unlock()
	if current(cur) {
		return cur, nil
	}
	doc, err := m.open(ctx, mt)
	if err != nil {
		return nil, err
	}
	if cur != nil && cur.typ == mt.Type {
		// Same engine, new document: reconfigure in place only when the
		// configuration itself changed (role edits do not need it).
		if !maps.Equal(cur.doc.Config, doc.Config) && len(doc.Config) > 0 {
			if _, err := cur.eng.Configure(ctx, doc.Config); err != nil {
				return nil, fmt.Errorf("engines: load configuration of %s: %w", path, err)
			}
		}
		nl := &live{typ: mt.Type, fp: fp, eng: cur.eng, doc: doc}
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.closed {
			return nil, fmt.Errorf("engines: mount %s: %w", path, errMountsClosed)
		}
		if m.cache[path] == cur {
			m.cache[path] = nl
		}
		return nl, nil
	}
	eng, err := m.reg.New(mt.Type, Env{Mount: path, Logger: m.logger.With("mount", path),
		Store: newSealedStore(m.store.Settings(), m.sealer, path), Custody: newScopedCustody(m.svc.Custody, path),
		Certificates: m.svc.Certificates, Managed: m.svc.Managed})
	if err != nil {
		return nil, err
	}
	if len(doc.Config) > 0 {
		if _, err := eng.Configure(ctx, doc.Config); err != nil {
			_ = eng.Close()
			return nil, fmt.Errorf("engines: load configuration of %s: %w", path, err)
		}
	}
	nl := &live{typ: mt.Type, fp: fp, eng: eng, doc: doc}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = eng.Close()
		return nil, fmt.Errorf("engines: mount %s: %w", path, errMountsClosed)
	}
	old := m.cache[path]
	m.cache[path] = nl
	m.mu.Unlock()
	if old != nil {
		_ = old.eng.Close()
	}
	return nl, nil
}

// errMountsClosed: the node is sealing or stopping.
var errMountsClosed = errors.New("mounts are closed")

// Running is a mount's running engine as Cached found it.
type Running struct {
	Engine Engine
	l      *live
}

// Cached returns the running engine of path without reading storage; ok
// is false when none runs here. It may be stale (the mount changed or
// went away on this node or another): use it only for a read whose own
// query also returns the mount row, and trust that read only when
// Current holds for the row it saw.
func (m *Mounts) Cached(path string) (r Running, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.cache[path]; l != nil {
		return Running{Engine: l.eng, l: l}, true
	}
	return Running{}, false
}

// Current reports whether r is still the running engine of path and was
// built from exactly the mount row mt (read by the caller; nil when there
// was none): the same type and sealed document, and no reload or
// reconfiguration since Cached returned it, so what r did agrees with the
// mount as the caller's snapshot saw it. False sends the caller to the
// path that re-reads the mount (Engine, Capability), which also reports
// a disabled mount.
func (m *Mounts) Current(path string, r Running, mt *storage.Mount) bool {
	if mt == nil || r.l == nil {
		return false
	}
	fp := sha256.Sum256(mt.SealedConfig)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cache[path] == r.l && r.l.typ == mt.Type && r.l.fp == fp
}

// forget drops the cached engine of path so the next use rebuilds it from
// storage (after a write whose outcome is unknown).
func (m *Mounts) forget(path string) {
	m.mu.Lock()
	b := m.building[path]
	m.mu.Unlock()
	if b != nil {
		// Not while its engine is being reconfigured in place.
		_ = b.lock(context.Background())
		defer b.unlock()
	}
	m.mu.Lock()
	cur := m.cache[path]
	delete(m.cache, path)
	m.mu.Unlock()
	if cur != nil {
		_ = cur.eng.Close()
	}
}

// Enable mounts a new engine of typ at path; a path under one of the
// API's reserved prefixes is refused (CheckMountPath).
func (m *Mounts) Enable(ctx context.Context, path, typ string) error {
	if err := CheckMountPath(path); err != nil {
		return err
	}
	return m.enable(ctx, path, typ)
}

// EnableInternal mounts one of Sigil's own engines, which may sit at a
// reserved path (the token engine at "auth"). It is never reachable from
// the API.
func (m *Mounts) EnableInternal(ctx context.Context, path, typ string) error {
	if err := CheckPath(path); err != nil {
		return err
	}
	return m.enable(ctx, path, typ)
}

func (m *Mounts) enable(ctx context.Context, path, typ string) error {
	if !slices.Contains(m.reg.Types(), typ) {
		return fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	all, err := m.store.Mounts().List(ctx)
	if err != nil {
		return fmt.Errorf("engines: enable %s: %w", path, err)
	}
	for _, o := range all {
		// Lease ids are MOUNT/ROLE/ID and prefix revocation works on the
		// id, so no mount may sit inside another.
		if o.Path == path || strings.HasPrefix(o.Path, path+"/") || strings.HasPrefix(path, o.Path+"/") {
			return fmt.Errorf("%w: %s (overlaps %s)", ErrMountExists, path, o.Path)
		}
	}
	sealed, err := m.seal(ctx, path, &mountDoc{})
	if err != nil {
		return fmt.Errorf("engines: enable %s: %w", path, err)
	}
	if err := m.store.Mounts().Put(ctx, &storage.Mount{Path: path, Type: typ, SealedConfig: sealed}); err != nil {
		return fmt.Errorf("engines: enable %s: %w", path, err)
	}
	m.logger.Info("engine enabled", "mount", path, "type", typ)
	return nil
}

// List returns the mounts ordered by path.
func (m *Mounts) List(ctx context.Context) ([]MountInfo, error) {
	all, err := m.store.Mounts().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("engines: list mounts: %w", err)
	}
	out := make([]MountInfo, 0, len(all))
	for _, mt := range all {
		out = append(out, MountInfo{Path: mt.Path, Type: mt.Type, CreatedAt: mt.CreatedAt})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// LeasePrefix is the lease-id prefix of every lease under a mount.
func LeasePrefix(mount string) string { return mount + "/" }

// RoleLeasePrefix is the lease-id prefix of every lease under a role.
func RoleLeasePrefix(mount, role string) string { return mount + "/" + role + "/" }

// Disable unmounts path. With active leases under it, it fails with
// ErrMountInUse unless revoke is non-nil, in which case it first revokes
// them with revoke(ctx, prefix) (the lease manager's RevokePrefix) and
// fails if any is still active afterwards.
func (m *Mounts) Disable(ctx context.Context, path string, revoke func(ctx context.Context, prefix string) error) error {
	if err := CheckPath(path); err != nil {
		return err
	}
	if _, err := m.getMount(ctx, path); err != nil {
		return err
	}
	prefix := LeasePrefix(path)
	n, err := m.store.Leases().CountActive(ctx, prefix)
	if err != nil {
		return fmt.Errorf("engines: disable %s: %w", path, err)
	}
	if n > 0 {
		if revoke == nil {
			return fmt.Errorf("%w: %s has %d active leases (revoke them first)", ErrMountInUse, path, n)
		}
		if err := revoke(ctx, prefix); err != nil {
			return fmt.Errorf("engines: disable %s: revoke leases: %w", path, err)
		}
		if n, err = m.store.Leases().CountActive(ctx, prefix); err != nil {
			return fmt.Errorf("engines: disable %s: %w", path, err)
		}
		if n > 0 {
			return fmt.Errorf("%w: %s still has %d active leases", ErrMountInUse, path, n)
		}
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	// One transaction: the mount, its engine data and its kv secrets go
	// together or not at all. The mount row goes first and the leases are
	// counted after: a mint that stored its lease before (holding the row,
	// storage.Mounts.Hold) is counted and the disable refused; one that
	// comes after finds no mount and creates nothing. Counting before the
	// delete alone let a mint on another node slip in between and leave a
	// secret whose mount, needed to revoke it, was gone.
	err = m.store.InTx(ctx, func(tx storage.Repos) error {
		if err := tx.Mounts().Delete(ctx, path); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("%w: %s", ErrMountNotFound, path)
			}
			return fmt.Errorf("engines: disable %s: %w", path, err)
		}
		n, err := tx.Leases().CountActive(ctx, prefix)
		if err != nil {
			return fmt.Errorf("engines: disable %s: %w", path, err)
		}
		if n > 0 {
			return fmt.Errorf("%w: %s has %d active leases (minted while it was being disabled; revoke them first)", ErrMountInUse, path, n)
		}
		// An irrevocable lease's secret may still exist in the backend, and
		// this mount's configuration is what a retry needs.
		irr, _, err := tx.Leases().List(ctx, storage.LeaseFilter{Prefix: prefix, State: storage.LeaseIrrevocable, Limit: 1})
		if err != nil {
			return fmt.Errorf("engines: disable %s: %w", path, err)
		}
		if len(irr) > 0 {
			return fmt.Errorf("%w: %s has irrevocable leases (%s among them) whose secrets may still exist in the backend, and a retry needs this mount: "+
				"revoke them again, or forget them with sigil lease revoke --force ID, first", ErrMountInUse, path, irr[0].ID)
		}
		if err := deleteData(ctx, tx.Settings(), path); err != nil {
			return fmt.Errorf("engines: disable %s: delete engine data: %w", path, err)
		}
		if err := tx.KV().DeleteMount(ctx, path); err != nil {
			return fmt.Errorf("engines: disable %s: delete kv secrets: %w", path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	m.forget(path)
	m.logger.Info("engine disabled", "mount", path)
	return nil
}

// update runs a read-modify-write of path's document. fn may change doc
// and use the running engine; the result is sealed and stored.
func (m *Mounts) update(ctx context.Context, path string, fn func(l *live, doc *mountDoc) error) error {
	return m.updateOpt(ctx, path, false, fn)
}

// updateOpt is update; with mustStore it stores the document even when fn
// fails (a credential already changed in the backend), retries the store,
// and on failure keeps the running engine, which is then the only holder
// of the new credential until restart.
func (m *Mounts) updateOpt(ctx context.Context, path string, mustStore bool, fn func(l *live, doc *mountDoc) error) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	l, err := m.get(ctx, path)
	if err != nil {
		return err
	}
	doc := cloneDoc(l.doc)
	fnErr := fn(l, doc)
	if fnErr != nil && !mustStore {
		return fnErr
	}
	sealed, err := m.seal(ctx, path, doc)
	if err != nil {
		return errors.Join(fnErr, fmt.Errorf("engines: seal mount %s: %w", path, err))
	}
	mt := &storage.Mount{Path: path, Type: l.typ, SealedConfig: sealed}
	err = m.store.Mounts().Put(ctx, mt)
	for i := 0; err != nil && mustStore && i < 3; i++ {
		time.Sleep(time.Duration(i+1) * 200 * time.Millisecond)
		err = m.store.Mounts().Put(context.WithoutCancel(ctx), mt)
	}
	if err != nil {
		if mustStore {
			m.logger.Error("engine credential changed but not stored: the running engine holds the only copy until restart; retry rotate-root", "mount", path, "error", err)
			return errors.Join(fnErr, fmt.Errorf("engines: store mount %s: %w", path, err))
		}
		// The engine may already run with a configuration that is not
		// stored: drop it so the next use reloads what is.
		m.forget(path)
		return fmt.Errorf("engines: store mount %s: %w", path, err)
	}
	// The running engine already has what was stored: record the new
	// fingerprint so the next use does not reconfigure it again.
	m.mu.Lock()
	if m.cache[path] == l {
		m.cache[path] = &live{typ: l.typ, fp: sha256.Sum256(sealed), eng: l.eng, doc: doc}
	}
	m.mu.Unlock()
	return fnErr
}

func cloneDoc(d *mountDoc) *mountDoc {
	n := &mountDoc{Config: maps.Clone(d.Config), MaxLeases: d.MaxLeases, Roles: map[string]roleDoc{}}
	for k, v := range d.Roles {
		n.Roles[k] = roleDoc{Fields: maps.Clone(v.Fields), MaxLeases: v.MaxLeases}
	}
	return n
}

// takeMaxLeases removes max_leases from fields and parses it; absent
// means keep (ok false).
func takeMaxLeases(fields map[string]string) (n int, ok bool, err error) {
	v, ok := fields[KeyMaxLeases]
	if !ok {
		return 0, false, nil
	}
	delete(fields, KeyMaxLeases)
	if v == "" {
		return 0, true, nil
	}
	n, err = strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("%w: %s must be a non-negative integer", ErrInvalidConfig, KeyMaxLeases)
	}
	return n, true, nil
}

// Configure merges cfg into the mount's configuration (a key with an empty
// value removes it) and applies it; the engine validates it (and may test
// its connection) before anything is stored. max_leases sets the mount's
// lease quota (0 or empty: unlimited).
func (m *Mounts) Configure(ctx context.Context, path string, cfg map[string]string) error {
	return m.update(ctx, path, func(l *live, doc *mountDoc) error {
		cfg = maps.Clone(cfg)
		ml, ok, err := takeMaxLeases(cfg)
		if err != nil {
			return err
		}
		if ok {
			doc.MaxLeases = ml
		}
		if len(cfg) == 0 {
			return nil
		}
		merged := maps.Clone(doc.Config)
		if merged == nil {
			merged = map[string]string{}
		}
		for k, v := range cfg {
			if v == "" {
				delete(merged, k)
			} else {
				merged[k] = v
			}
		}
		norm, err := l.eng.Configure(ctx, merged)
		if err != nil {
			// The caller's operation already says "configure"; the mount
			// is the context it lacks.
			return fmt.Errorf("mount %s: %w", path, err)
		}
		doc.Config = norm
		return nil
	})
}

// ReadConfig returns the mount's configuration with secrets redacted by
// the engine.
func (m *Mounts) ReadConfig(ctx context.Context, path string) (map[string]string, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return nil, err
	}
	cfg := maps.Clone(l.doc.Config)
	if cfg == nil {
		cfg = map[string]string{}
	}
	if r, ok := l.eng.(ConfigRedactor); ok {
		cfg = r.RedactConfig(cfg)
	}
	if l.doc.MaxLeases > 0 {
		cfg[KeyMaxLeases] = strconv.Itoa(l.doc.MaxLeases)
	}
	return cfg, nil
}

// RotateRoot asks the engine to rotate its root credential and stores the
// configuration it returns.
func (m *Mounts) RotateRoot(ctx context.Context, path string) error {
	l, err := m.get(ctx, path)
	if err != nil {
		return err
	}
	if _, ok := l.eng.(RootRotator); !ok {
		return fmt.Errorf("%w: rotate-root on %s engine", ErrNotSupported, l.typ)
	}
	return m.updateOpt(ctx, path, true, func(l *live, doc *mountDoc) error {
		rr, ok := l.eng.(RootRotator)
		if !ok {
			return fmt.Errorf("%w: rotate-root on %s engine", ErrNotSupported, l.typ)
		}
		cfg, err := rr.RotateRoot(ctx)
		if cfg != nil {
			// Store whatever the engine now uses, even after an error.
			doc.Config = cfg
		}
		if err != nil {
			return fmt.Errorf("engines: rotate root of %s: %w", path, err)
		}
		m.logger.Info("root credential rotated", "mount", path)
		return nil
	})
}

// WriteRole creates or replaces a role. max_leases sets the role's quota.
func (m *Mounts) WriteRole(ctx context.Context, path, name string, fields map[string]string) error {
	if err := CheckRoleName(name); err != nil {
		return err
	}
	return m.update(ctx, path, func(l *live, doc *mountDoc) error {
		fields = maps.Clone(fields)
		if fields == nil {
			fields = map[string]string{}
		}
		ml, _, err := takeMaxLeases(fields)
		if err != nil {
			return err
		}
		le, ok := l.eng.(Leased)
		if !ok {
			return &CapabilityError{Mount: path, Type: l.typ, Need: "it has no roles"}
		}
		norm, err := le.ValidateRole(ctx, name, fields)
		if err != nil {
			return fmt.Errorf("engines: role %s/%s: %w", path, name, err)
		}
		doc.Roles[name] = roleDoc{Fields: norm, MaxLeases: ml}
		return nil
	})
}

// ReadRole returns a role's fields (with max_leases if set).
func (m *Mounts) ReadRole(ctx context.Context, path, name string) (map[string]string, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return nil, err
	}
	r, ok := l.doc.Roles[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s", ErrRoleNotFound, path, name)
	}
	out := maps.Clone(r.Fields)
	if out == nil {
		out = map[string]string{}
	}
	if r.MaxLeases > 0 {
		out[KeyMaxLeases] = strconv.Itoa(r.MaxLeases)
	}
	return out, nil
}

// Role returns a role as engines get it (without max_leases), for
// operations under a role that mint no lease, such as SSH signing.
func (m *Mounts) Role(ctx context.Context, path, name string) (Role, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return Role{}, err
	}
	r, ok := l.doc.Roles[name]
	if !ok {
		return Role{}, fmt.Errorf("%w: %s/%s", ErrRoleNotFound, path, name)
	}
	return Role{Name: name, Fields: maps.Clone(r.Fields)}, nil
}

// ListRoles returns the role names of a mount, sorted.
func (m *Mounts) ListRoles(ctx context.Context, path string) ([]string, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(l.doc.Roles)), nil
}

// DeleteRole removes a role. Its existing leases stay revocable: each
// lease carries its own revocation data.
func (m *Mounts) DeleteRole(ctx context.Context, path, name string) error {
	return m.update(ctx, path, func(_ *live, doc *mountDoc) error {
		if _, ok := doc.Roles[name]; !ok {
			return fmt.Errorf("%w: %s/%s", ErrRoleNotFound, path, name)
		}
		delete(doc.Roles, name)
		return nil
	})
}

// Engine returns the running engine of a mount; callers find what it can
// do by type assertion (Leased, the capabilities), or with Capability.
func (m *Mounts) Engine(ctx context.Context, path string) (Engine, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return nil, err
	}
	return l.eng, nil
}

// Revoker returns the running engine of a mount whose secrets are tracked
// by leases (for renew and revoke), or a *CapabilityError.
func (m *Mounts) Revoker(ctx context.Context, path string) (Revoker, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return nil, err
	}
	r, ok := l.eng.(Revoker)
	if !ok {
		return nil, &CapabilityError{Mount: path, Type: l.typ, Need: "it has no leases"}
	}
	return r, nil
}

func notLeased(path, typ string) error {
	return &CapabilityError{Mount: path, Type: typ, Need: "it mints no leased secrets"}
}

// Bind returns the engine, role and quotas for minting under path/role.
// A mount whose engine is not Leased is refused with a *CapabilityError.
func (m *Mounts) Bind(ctx context.Context, path, role string) (*Binding, error) {
	l, err := m.get(ctx, path)
	if err != nil {
		return nil, err
	}
	le, ok := l.eng.(Leased)
	if !ok {
		return nil, notLeased(path, l.typ)
	}
	r, ok := l.doc.Roles[role]
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s", ErrRoleNotFound, path, role)
	}
	return &Binding{
		Mount: path, Type: l.typ, Engine: le,
		Role:           Role{Name: role, Fields: maps.Clone(r.Fields)},
		MountMaxLeases: l.doc.MaxLeases, RoleMaxLeases: r.MaxLeases,
	}, nil
}

// Capability returns the running engine of mount as capability T (one of
// the optional interfaces, such as Transit), or a *CapabilityError naming
// the mount's engine type and need, a phrase such as "transit operations
// need a transit mount".
func Capability[T any](ctx context.Context, m *Mounts, mount, need string) (T, error) {
	var zero T
	l, err := m.get(ctx, mount)
	if err != nil {
		return zero, err
	}
	c, ok := l.eng.(T)
	if !ok {
		return zero, &CapabilityError{Mount: mount, Type: l.typ, Need: need}
	}
	return c, nil
}

// CapabilityError is a mount whose engine lacks what an operation needs.
// It is both ErrNotSupported (the engine cannot) and ErrInvalidRequest:
// the caller named the wrong mount, which transports report as bad input,
// not as a feature the server lacks.
type CapabilityError struct {
	Mount, Type, Need string
}

func (e *CapabilityError) Error() string {
	return fmt.Sprintf("mount %s is a %s engine; %s", e.Mount, e.Type, e.Need)
}

// Unwrap makes errors.Is hold for ErrNotSupported and ErrInvalidRequest.
func (e *CapabilityError) Unwrap() []error { return []error{ErrNotSupported, ErrInvalidRequest} }

// Close closes every running engine.
func (m *Mounts) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var errs []error
	for p, l := range m.cache {
		errs = append(errs, l.eng.Close())
		delete(m.cache, p)
	}
	return errors.Join(errs...)
}
