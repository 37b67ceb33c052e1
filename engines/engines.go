// Package engines is Sigil's secret-engine framework: the interface every
// dynamic-credential engine implements, a Registry of engine types that the
// server builds explicitly (there is no package-level registry), and Mounts,
// which enables engines at paths and keeps their configuration and roles
// sealed in storage.
//
// Engines know nothing of transport, storage or leases. An engine that
// mints leased secrets implements Leased, whose minting is split in two so
// that a lease can always be recorded before anything exists in the
// backend: Prepare decides everything the secret will be (notably what
// Revoke needs, such as a database username) without side effects, and
// Create makes it. Revoke must be idempotent and must succeed for prepared
// secrets that Create never made or only half made, so a lease left behind
// by a crash can always be revoked.
package engines

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// Errors callers branch on.
var (
	ErrUnknownType    = errors.New("engines: unknown engine type")
	ErrDuplicateType  = errors.New("engines: engine type already registered")
	ErrMountNotFound  = errors.New("engines: no engine mounted at path")
	ErrMountExists    = errors.New("engines: path already mounted")
	ErrMountInUse     = errors.New("engines: mount has active leases")
	ErrRoleNotFound   = errors.New("engines: role not found")
	ErrInvalidPath    = errors.New("engines: invalid path or name")
	ErrInvalidConfig  = errors.New("engines: invalid configuration")
	ErrNotConfigured  = errors.New("engines: engine not configured")
	ErrNotSupported   = errors.New("engines: operation not supported by engine")
	ErrInvalidRequest = errors.New("engines: invalid request")
	// ErrOutcomeUnknown wraps an error after which the backend may or may
	// not have taken the operation (a timeout, a cancellation, a lost
	// connection): the lease manager then assumes it did.
	ErrOutcomeUnknown = errors.New("engines: outcome unknown")
	// ErrRejected wraps a refusal that retrying will not fix (permission
	// denied, a bad statement, a name already taken): an operator must act.
	ErrRejected = errors.New("engines: rejected by the backend")
)

// Engine is one mounted instance of an engine type: the little every
// engine has. What an engine can do beyond it is an optional interface
// found by type assertion (Leased for engines that mint leased secrets,
// Revoker for those whose leases are registered from elsewhere,
// RootRotator, ConfigRedactor, and the capabilities in capabilities.go),
// as in go.step.sm/crypto's kms/apiv1. It must be safe for concurrent use.
type Engine interface {
	// Configure validates cfg and applies it, replacing any previous
	// configuration. It returns the configuration to persist (normalised,
	// defaults filled). It is also how a stored configuration is loaded.
	Configure(ctx context.Context, cfg map[string]string) (map[string]string, error)
	// Close releases the engine's resources (connection pools).
	Close() error
}

// Revoker is implemented by engines whose secrets are tracked by leases:
// what the lease manager needs to renew and revoke them. Engines that also
// mint under roles implement Leased; an engine whose secrets Sigil makes
// elsewhere (API tokens, registered with lease.Manager.Register) needs only
// this.
type Revoker interface {
	Engine
	// Renew moves the secret's expiry in the backend, if it has one.
	Renew(ctx context.Context, revocation []byte, expiresAt time.Time) error
	// Revoke destroys the secret. It must be idempotent: a secret already
	// gone, or never created, is a success.
	Revoke(ctx context.Context, revocation []byte) error
}

// Leased is implemented by engines that mint secrets tracked by leases
// under roles. Mounts.Bind (and so every mint) and role writes refuse a
// mount whose engine lacks it with a *CapabilityError (ErrNotSupported).
type Leased interface {
	Revoker
	// ValidateRole checks a role definition and returns it normalised for
	// storage. Engines keep no role state: the role comes back with each
	// Prepare.
	ValidateRole(ctx context.Context, name string, fields map[string]string) (map[string]string, error)
	// Prepare decides a secret for role without side effects: its TTLs and
	// the revocation data that will be recorded (sealed) in the lease
	// before Create runs.
	Prepare(ctx context.Context, role Role, req MintRequest) (*Pending, error)
	// Create makes the prepared secret in the backend and returns what the
	// caller receives. An error means nothing was created, unless it wraps
	// ErrOutcomeUnknown (or ctx ended first): then the secret may exist or
	// appear later. Whatever happens, Create must not take effect after
	// ctx's deadline plus as long again (the lease's pending window), so an
	// engine whose backend keeps working after the client gives up bounds
	// that work on the backend's side (PostgreSQL: statement_timeout).
	Create(ctx context.Context, p *Pending) (*Secret, error)
}

// RootRotator is implemented by engines whose configuration holds a
// credential they can rotate (for example a database superuser password).
type RootRotator interface {
	// RotateRoot changes the credential in the backend and returns the
	// configuration to persist. The engine must keep working with the new
	// credential when it returns.
	RotateRoot(ctx context.Context) (map[string]string, error)
}

// ConfigRedactor is implemented by engines whose configuration holds
// secrets; Mounts.ReadConfig returns its output instead of the stored
// values.
type ConfigRedactor interface {
	RedactConfig(cfg map[string]string) map[string]string
}

// Role is a stored role definition handed to Prepare.
type Role struct {
	Name   string
	Fields map[string]string
}

// MintRequest asks for one secret.
type MintRequest struct {
	Role     string
	LeaseID  string        // the lease the secret will be tracked by
	Identity string        // the caller, for templates and audit
	TTL      time.Duration // requested; 0 means the role's default
	Now      time.Time     // issue time; the lease manager fills it
}

// Pending is a prepared secret. Revocation is persisted; Private is the
// engine's own in-memory state (for example the generated password) and is
// never persisted or logged.
type Pending struct {
	Revocation   []byte
	ExpiresAt    time.Time
	MaxExpiresAt time.Time
	Renewable    bool
	Private      any
}

// Secret is a created secret. Data goes to the caller (sealed to its
// recipient key); nothing in it is stored.
type Secret struct {
	Data map[string]string
	// Public is what may travel in clear beside the envelope (a minted
	// key's public half, a certificate).
	Public map[string]string
}

// Env is what a factory gets to build an engine for a mount.
type Env struct {
	Mount  string
	Logger *slog.Logger
	// Store is the mount's private sealed storage.
	Store Store
	// Custody is key custody scoped to the mount; nil if the server has none.
	Custody Custody
	// Certificates is the CA; nil if the server has none.
	Certificates Certificates
	// Managed is HSM-held symmetric keys; nil without an HSM.
	Managed ManagedKeys
}

// Factory makes an unconfigured engine.
type Factory func(env Env) (Engine, error)

// Registry maps engine types to factories. cmd/server builds one and
// registers the engines it ships with, like database/sql drivers but
// without package-level state: tests and servers get their own.
type Registry struct {
	mu        sync.RWMutex
	factories map[string]Factory
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{factories: map[string]Factory{}} }

// Register adds an engine type.
func (r *Registry) Register(typ string, f Factory) error {
	if err := checkName(typ); err != nil || f == nil {
		return fmt.Errorf("%w: engine type %q", ErrInvalidPath, typ)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.factories[typ]; ok {
		return fmt.Errorf("%w: %q", ErrDuplicateType, typ)
	}
	r.factories[typ] = f
	return nil
}

// Types lists the registered types, sorted.
func (r *Registry) Types() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.factories))
}

// New builds an unconfigured engine of typ.
func (r *Registry) New(typ string, env Env) (Engine, error) {
	r.mu.RLock()
	f, ok := r.factories[typ]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	return f(env)
}
