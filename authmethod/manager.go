package authmethod

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/ratelimit"
	"github.com/sigil-ca/sigil/storage"
)

// SealKind is the barrier kind of every auth-method record; the id is the
// setting key. Configurations hold secrets (bindpass, client secrets), and
// roles and groups say who gets which policies, so all are sealed: a copy
// of the database neither reveals nor (undetected) changes them.
const SealKind = "authmethod"

// settingPrefix is the prefix of every auth-method setting:
// authmethod/mounts/MOUNT, authmethod/roles/MOUNT/ROLE,
// authmethod/groups/MOUNT/GROUP.
const settingPrefix = "authmethod/"

// Rewrapper lists the sealed records, for the barrier's rewrap registry.
func Rewrapper(s storage.Settings) storage.SealedSettings {
	return storage.SealedSettings{Settings: s, Prefix: settingPrefix}
}

// Sealer seals and opens records; the barrier implements it.
type Sealer interface {
	Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error)
}

// Registry holds the types a server offers.
type Registry struct{ types map[string]Type }

// NewRegistry returns a registry of types.
func NewRegistry(types ...Type) (*Registry, error) {
	r := &Registry{types: map[string]Type{}}
	for _, t := range types {
		if _, dup := r.types[t.Name()]; dup {
			return nil, fmt.Errorf("auth method type %q registered twice", t.Name())
		}
		r.types[t.Name()] = t
	}
	return r, nil
}

// Names lists the registered types, sorted.
func (r *Registry) Names() []string { return slices.Sorted(maps.Keys(r.types)) }

// Mount is a stored mount.
type Mount struct {
	Name    string            `json:"name"`
	Type    string            `json:"type"`
	Config  map[string]string `json:"config,omitempty"`
	Created time.Time         `json:"created"`
	// Token holds the mount-wide token settings (token_* keys of the
	// configuration), used by logins without a role.
	Token TokenSettings `json:"token"`
}

// Manager stores mounts, roles and groups and runs logins.
type Manager struct {
	settings storage.Settings
	sealer   Sealer
	reg      *Registry
	log      *slog.Logger
	fails    *FailureLimiter
	starts   *ratelimit.Limiter

	mu      sync.Mutex
	methods map[string]cachedMethod
	closed  bool // set by Close: a method built after it is closed, not cached
}

// cachedMethod is a built Method and the hash of the configuration it was
// built from: a change (on any node) is noticed at the next login.
type cachedMethod struct {
	sum    [32]byte
	method Method
}

// Options configure a Manager.
type Options struct {
	Settings storage.Settings
	Sealer   Sealer
	Registry *Registry
	Logger   *slog.Logger
	// Failures limits failed logins per source; nil: DefaultFailureLimiter.
	Failures *FailureLimiter
	// Starts limits browser logins started per source (AuthURL), failed or
	// not: each stores a sealed record until its callback or expiry. nil:
	// DefaultStartRate per second, DefaultStartBurst at once.
	Starts *ratelimit.Limiter
}

// The defaults of Options.Starts: a person starts a browser login now and
// then; a script that starts thousands fills storage and, at pendingMax,
// refuses everyone's.
const (
	DefaultStartRate  = 1.0
	DefaultStartBurst = 20
)

// NewManager returns a Manager.
func NewManager(o Options) *Manager {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Failures == nil {
		o.Failures = DefaultFailureLimiter()
	}
	if o.Starts == nil {
		o.Starts = ratelimit.New(DefaultStartRate, DefaultStartBurst)
	}
	return &Manager{settings: o.Settings, sealer: o.Sealer, reg: o.Registry, log: o.Logger, fails: o.Failures, starts: o.Starts, methods: map[string]cachedMethod{}}
}

// Close closes every built method.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var err error
	for k, c := range m.methods {
		err = errors.Join(err, c.method.Close())
		delete(m.methods, k)
	}
	return err
}

// CheckMountName refuses a mount name that is not one path segment of
// [a-z0-9_-] and friends (engines' rules).
func CheckMountName(name string) error {
	if strings.Contains(name, "/") || engines.CheckRoleName(name) != nil {
		return errs.Errorf(errs.InvalidArgument, "auth mount name %q: use letters, digits, '-' and '_' (one segment)", name)
	}
	return nil
}

// CheckName refuses a role or group name that is not a valid name.
func CheckName(kind, name string) error {
	if engines.CheckRoleName(name) != nil {
		return errs.Errorf(errs.InvalidArgument, "%s name %q: use letters, digits, '.', '-' and '_'", kind, name)
	}
	return nil
}

func mountKey(mount string) string        { return settingPrefix + "mounts/" + mount }
func roleKey(mount, role string) string   { return settingPrefix + "roles/" + mount + "/" + role }
func groupKey(mount, grp string) string   { return settingPrefix + "groups/" + mount + "/" + grp }
func rolePrefix(mount string) string      { return settingPrefix + "roles/" + mount + "/" }
func groupPrefix(mount string) string     { return settingPrefix + "groups/" + mount + "/" }
func notFound(what string) error          { return errs.New(errs.NotFound, what) }
func invalidf(f string, a ...any) error   { return errs.Errorf(errs.InvalidArgument, f, a...) }
func internal(op string, err error) error { return errs.Wrap(errs.Internal, op, err) }

// put seals v under key.
func (m *Manager) put(ctx context.Context, key string, v any, ifAbsent bool) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return internal("encode "+key, err)
	}
	defer clear(raw)
	sealed, err := m.sealer.Seal(ctx, SealKind, key, raw)
	if err != nil {
		return internal("seal "+key, err)
	}
	if ifAbsent {
		err = m.settings.PutIfAbsent(ctx, key, sealed)
	} else {
		err = m.settings.Put(ctx, key, sealed)
	}
	if err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	return nil
}

// get opens key into v; errs.NotFound naming what when absent.
func (m *Manager) get(ctx context.Context, key, what string, v any) error {
	sealed, err := m.settings.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return notFound(what + " not found")
	}
	if err != nil {
		return internal("load "+what, err)
	}
	raw, err := m.sealer.Open(ctx, SealKind, key, sealed)
	if err != nil {
		return internal("open "+what, err)
	}
	defer clear(raw)
	if err := json.Unmarshal(raw, v); err != nil {
		return internal("decode "+what, err)
	}
	return nil
}

// Enable mounts a method of type typ at mount. It has no configuration
// yet, and refuses logins until configured.
func (m *Manager) Enable(ctx context.Context, mount, typ string) error {
	if err := CheckMountName(mount); err != nil {
		return err
	}
	if _, ok := m.reg.types[typ]; !ok {
		return invalidf("unknown auth method type %q (available: %s)", typ, strings.Join(m.reg.Names(), ", "))
	}
	err := m.put(ctx, mountKey(mount), &Mount{Name: mount, Type: typ, Created: time.Now().UTC()}, true)
	if errors.Is(err, storage.ErrConflict) {
		return errs.Errorf(errs.Conflict, "auth mount %q exists already", mount)
	}
	return err
}

// Mount returns a stored mount.
func (m *Manager) Mount(ctx context.Context, mount string) (*Mount, error) {
	if err := CheckMountName(mount); err != nil {
		return nil, err
	}
	var mt Mount
	if err := m.get(ctx, mountKey(mount), fmt.Sprintf("auth mount %q", mount), &mt); err != nil {
		return nil, err
	}
	return &mt, nil
}

// MountInfo is a mount as List shows it (no configuration: it may hold
// secrets).
type MountInfo struct {
	Name, Type string
	Configured bool
	Roles      int
}

// List returns every mount, sorted by name.
func (m *Manager) List(ctx context.Context) ([]MountInfo, error) {
	keys, err := m.settings.List(ctx, settingPrefix+"mounts/")
	if err != nil {
		return nil, internal("list auth mounts", err)
	}
	out := make([]MountInfo, 0, len(keys))
	for _, k := range keys {
		mt, err := m.Mount(ctx, strings.TrimPrefix(k, settingPrefix+"mounts/"))
		if errs.KindOf(err) == errs.NotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		roles, err := m.settings.List(ctx, rolePrefix(mt.Name))
		if err != nil {
			return nil, internal("list roles", err)
		}
		out = append(out, MountInfo{Name: mt.Name, Type: mt.Type, Configured: mt.Config != nil, Roles: len(roles)})
	}
	return out, nil
}

// Disable removes a mount with its roles and groups (core revokes the
// tokens its logins issued).
func (m *Manager) Disable(ctx context.Context, mount string) error {
	if _, err := m.Mount(ctx, mount); err != nil {
		return err
	}
	// Started logins go too: a mount enabled again under the name must
	// not finish a login the old one started.
	for _, prefix := range []string{rolePrefix(mount), groupPrefix(mount), pendingPrefix + mount + "/"} {
		keys, err := m.settings.List(ctx, prefix)
		if err != nil {
			return internal("list "+prefix, err)
		}
		for _, k := range keys {
			if err := m.settings.Delete(ctx, k); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return internal("delete "+k, err)
			}
		}
	}
	if err := m.settings.Delete(ctx, mountKey(mount)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return internal("delete auth mount", err)
	}
	m.forget(mount)
	return nil
}

func (m *Manager) forget(mount string) {
	m.mu.Lock()
	c, ok := m.methods[mount]
	delete(m.methods, mount)
	m.mu.Unlock()
	if ok {
		if err := c.method.Close(); err != nil {
			m.log.Warn("close auth method", "mount", mount, "err", err)
		}
	}
}

// Configure replaces a mount's configuration after its type checked it.
func (m *Manager) Configure(ctx context.Context, mount string, cfg map[string]string) error {
	mt, err := m.Mount(ctx, mount)
	if err != nil {
		return err
	}
	ts, rest, err := splitToken(cfg)
	if err != nil {
		return err
	}
	checked, err := m.reg.types[mt.Type].CheckConfig(ctx, rest)
	if err != nil {
		return err
	}
	if checked == nil {
		checked = map[string]string{}
	}
	mt.Config, mt.Token = checked, ts
	if err := m.put(ctx, mountKey(mount), mt, false); err != nil {
		return err
	}
	m.forget(mount)
	return nil
}

// WriteRole checks and stores a role (replacing one of that name).
func (m *Manager) WriteRole(ctx context.Context, mount, role string, fields map[string]string) error {
	mt, err := m.Mount(ctx, mount)
	if err != nil {
		return err
	}
	if err := CheckName("role", role); err != nil {
		return err
	}
	if mt.Config == nil {
		return errs.Errorf(errs.FailedPrecondition, "auth mount %q is not configured: run `sigil auth configure %s key=value...` first", mount, mount)
	}
	ts, rest, err := splitToken(fields)
	if err != nil {
		return err
	}
	checked, err := m.reg.types[mt.Type].CheckRole(mt.Config, rest)
	if err != nil {
		return err
	}
	return m.put(ctx, roleKey(mount, role), &Role{Name: role, Token: ts, Fields: checked}, false)
}

// ReadRole returns a role's stored fields, common ones included.
func (m *Manager) ReadRole(ctx context.Context, mount, role string) (map[string]string, error) {
	r, err := m.role(ctx, mount, role)
	if err != nil {
		return nil, err
	}
	out := maps.Clone(r.Fields)
	if out == nil {
		out = map[string]string{}
	}
	tokenFields(r.Token, out)
	return out, nil
}

func (m *Manager) role(ctx context.Context, mount, role string) (*Role, error) {
	if err := CheckName("role", role); err != nil {
		return nil, err
	}
	var r Role
	if err := m.get(ctx, roleKey(mount, role), fmt.Sprintf("role %q of auth mount %q", role, mount), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ListRoles returns a mount's role names, sorted.
func (m *Manager) ListRoles(ctx context.Context, mount string) ([]string, error) {
	if _, err := m.Mount(ctx, mount); err != nil {
		return nil, err
	}
	keys, err := m.settings.List(ctx, rolePrefix(mount))
	if err != nil {
		return nil, internal("list roles", err)
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, strings.TrimPrefix(k, rolePrefix(mount)))
	}
	return out, nil
}

// DeleteRole removes a role.
func (m *Manager) DeleteRole(ctx context.Context, mount, role string) error {
	if err := CheckName("role", role); err != nil {
		return err
	}
	err := m.settings.Delete(ctx, roleKey(mount, role))
	if errors.Is(err, storage.ErrNotFound) {
		return notFound(fmt.Sprintf("role %q of auth mount %q not found", role, mount))
	}
	if err != nil {
		return internal("delete role", err)
	}
	return nil
}

// Group maps a group name (an LDAP group, an OIDC groups-claim value) to
// policies.
type Group struct {
	Name     string   `json:"name"`
	Policies []string `json:"policies"`
}

// WriteGroup stores a group's policies (token_policies; an empty list
// deletes the mapping).
func (m *Manager) WriteGroup(ctx context.Context, mount, group string, fields map[string]string) error {
	if _, err := m.Mount(ctx, mount); err != nil {
		return err
	}
	if err := CheckName("group", group); err != nil {
		return err
	}
	var policies []string
	for k, v := range fields {
		switch k {
		case KeyTokenPolicies, "policies":
			policies = SplitList(v)
		default:
			return invalidf("group field %q is unknown: a group takes token_policies", k)
		}
	}
	for _, p := range policies {
		if p == policy.RootPolicy {
			return invalidf("token_policies: an auth method may not grant the root policy")
		}
		if err := policy.ValidName(p); err != nil {
			return invalidf("token_policies: %v", err)
		}
	}
	if len(policies) == 0 {
		err := m.settings.Delete(ctx, groupKey(mount, group))
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return internal("delete group", err)
		}
		return nil
	}
	return m.put(ctx, groupKey(mount, group), &Group{Name: group, Policies: policies}, false)
}

// groupPolicies returns the policies mapped to groups on mount.
func (m *Manager) groupPolicies(ctx context.Context, mount string, groups []string) ([]string, error) {
	var out []string
	for _, g := range groups {
		if CheckName("group", g) != nil {
			continue // a name no group can have maps to nothing
		}
		var grp Group
		err := m.get(ctx, groupKey(mount, g), "group", &grp)
		if errs.KindOf(err) == errs.NotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, grp.Policies...)
	}
	return out, nil
}

// method returns the mount's built Method, rebuilding it when the stored
// configuration changed.
func (m *Manager) method(ctx context.Context, mt *Mount) (Method, error) {
	if mt.Config == nil {
		return nil, errs.Errorf(errs.FailedPrecondition, "auth mount %q is not configured", mt.Name)
	}
	raw, err := json.Marshal(mt.Config)
	if err != nil {
		return nil, internal("encode config", err)
	}
	sum := sha256.Sum256(append([]byte(mt.Type+"\x00"), raw...))
	clear(raw)
	m.mu.Lock()
	c, ok := m.methods[mt.Name]
	m.mu.Unlock()
	if ok && c.sum == sum {
		return c.method, nil
	}
	meth, err := m.reg.types[mt.Type].New(ctx, mt.Name, mt.Config)
	if err != nil {
		return nil, err
	}
	if pu, ok := meth.(PendingUser); ok {
		// Started logins live in storage: any node finishes them.
		pu.UsePending(NewSettingsPending(m.settings, m.sealer, mt.Name, nil))
	}
	m.mu.Lock()
	if m.closed {
		// Built while the server sealed: nobody would close it.
		m.mu.Unlock()
		_ = meth.Close()
		return nil, errs.Errorf(errs.Unavailable, "auth mount %q: the server is sealing", mt.Name)
	}
	old, had := m.methods[mt.Name]
	if had && old.sum == sum {
		// Another login built it meanwhile: keep that one, which may be in
		// use, and drop ours.
		m.mu.Unlock()
		_ = meth.Close()
		return old.method, nil
	}
	m.methods[mt.Name] = cachedMethod{sum: sum, method: meth}
	m.mu.Unlock()
	if had {
		// A configuration change: logins still running on the old method
		// finish with it (Close must let them).
		_ = old.method.Close()
	}
	return meth, nil
}

// Verified is the outcome of a successful login: who, with which
// policies, for how long. core issues the token.
type Verified struct {
	Mount, Type, Role string
	Identity          *Identity
	Policies          []string
	Token             TokenSettings
}

// Login verifies creds on mount. source identifies where the attempt came
// from (the client's address): after too many failures from one source,
// its attempts are refused with ResourceExhausted until it has waited.
func (m *Manager) Login(ctx context.Context, source, mount string, creds Credentials) (*Verified, error) {
	if err := m.fails.Check(source); err != nil {
		return nil, err
	}
	v, err := m.login(ctx, mount, creds)
	if err != nil && countsAsFailure(err) {
		m.fails.Fail(source)
	}
	return v, err
}

// countsAsFailure: a refused credential or malformed request counts; an
// outage on Sigil's side or at the provider does not.
func countsAsFailure(err error) bool {
	switch errs.KindOf(err) {
	case errs.Unavailable, errs.Internal, errs.ResourceExhausted:
		return false
	}
	return true
}

func (m *Manager) login(ctx context.Context, mount string, creds Credentials) (*Verified, error) {
	mt, err := m.Mount(ctx, mount)
	if err != nil {
		return nil, err
	}
	meth, err := m.method(ctx, mt)
	if err != nil {
		return nil, err
	}
	loader := func(ctx context.Context, name string) (*Role, error) { return m.role(ctx, mount, name) }
	id, err := meth.Login(ctx, creds, loader)
	if err != nil {
		return nil, err
	}
	v := &Verified{Mount: mount, Type: mt.Type, Identity: id, Token: mt.Token}
	if id.Role != nil {
		v.Role, v.Token = id.Role.Name, id.Role.Token
	}
	gp, err := m.groupPolicies(ctx, mount, id.Groups)
	if err != nil {
		return nil, err
	}
	ps := slices.Concat(v.Token.Policies, gp, id.Policies)
	slices.Sort(ps)
	v.Policies = slices.Compact(ps)
	if len(v.Policies) == 0 {
		return nil, errs.Errorf(errs.PermissionDenied, "login to %s as %q verified, but no policy applies (role token_policies, groups): refused (deny by default)", mount, id.Name)
	}
	return v, nil
}

// AuthURL starts a browser login on a mount whose method is a Redirector.
// A source blocked for failed logins cannot start one either, and a
// refused start counts as a failure. Starts are limited per source whether
// they succeed or not (Options.Starts).
func (m *Manager) AuthURL(ctx context.Context, source, mount, role, redirectURI, clientNonce string) (string, error) {
	if err := m.fails.Check(source); err != nil {
		return "", err
	}
	if ok, wait := m.starts.Allow(source); !ok {
		return "", &errs.Error{Kind: errs.ResourceExhausted, RetryAfter: wait,
			Msg: fmt.Sprintf("too many browser logins started from this address: retry in %s", wait.Round(time.Second)+time.Second)}
	}
	u, err := m.authURL(ctx, mount, role, redirectURI, clientNonce)
	if err != nil && countsAsFailure(err) {
		m.fails.Fail(source)
	}
	return u, err
}

func (m *Manager) authURL(ctx context.Context, mount, role, redirectURI, clientNonce string) (string, error) {
	mt, err := m.Mount(ctx, mount)
	if err != nil {
		return "", err
	}
	meth, err := m.method(ctx, mt)
	if err != nil {
		return "", err
	}
	r, ok := meth.(Redirector)
	if !ok {
		return "", errs.Errorf(errs.FailedPrecondition, "auth mount %q (type %s) has no browser login", mount, mt.Type)
	}
	if role == "" {
		role = mt.Config["default_role"]
	}
	if role == "" {
		return "", invalidf("role is required (or set default_role on the mount)")
	}
	ro, err := m.role(ctx, mount, role)
	if err != nil {
		return "", err
	}
	return r.AuthURL(ctx, ro, redirectURI, clientNonce)
}
