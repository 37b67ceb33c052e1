// Package core is Sigil beneath its transports: the seal state machine
// (init, unseal, seal, key rotation and rewrap), the graph of components
// that exists only while unsealed, and their background work. It knows no
// gRPC, no HTTP and no wire types: requests and results are typed here, and
// server converts them to and from the wire.
package core

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/engines"
	kvengine "github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/ratelimit"
	"github.com/sigil-ca/sigil/seal"
	"github.com/sigil-ca/sigil/storage"
)

// Options are a Core's dependencies. Store and Barrier are opened (and
// closed) by the caller; the barrier is sealed until Start or Unseal.
type Options struct {
	Config  config.Config
	Store   storage.Store
	Barrier *barrier.Barrier
	// HSM is the PKCS#11 token when one is configured: key custody, the
	// master key's wrapper (auto-unseal) and engines' managed keys.
	HSM    *hsm.PKCS11
	Logger *slog.Logger
	Wiring Wiring
	// IssuanceRefused counts issuance the CA refused because its issuer is
	// revoked or expired (a metric above core); optional.
	IssuanceRefused func(reason string)
}

// Wiring is what the layer above adds to every unsealed graph while it is
// built. Each hook is optional.
type Wiring struct {
	// ACME opens the ACME server over the graph; it is not called when the
	// configuration disables ACME.
	ACME func(u *Unsealed) (*acme.Server, error)
	// Once runs fn on one node of a cluster sharing the database at a
	// time, until ctx ends (issue 18); without it fn runs here.
	Once func(ctx context.Context, name string, fn func(context.Context) error) error
	// ClusterHealthy, if set, reports whether this node may serve: not
	// while it is cut off from a database it shares with other nodes.
	// Readiness includes it.
	ClusterHealthy func() error
}

// Core holds the seal state and, while unsealed, the component graph.
type Core struct {
	opts Options
	log  *slog.Logger
	// limiter bounds minting and issuance per identity and path.
	limiter *ratelimit.Limiter

	// initMu serialises init, unseal and seal.
	initMu      sync.Mutex
	mu          sync.RWMutex
	u           *Unsealed // nil while sealed
	progress    *seal.Progress
	initialized bool
}

// New returns a sealed Core and registers every owner's barrier-sealed
// values with the barrier's rewrap registry.
func New(o Options) *Core {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	registerRewrappers(o.Barrier, o.Store)
	return &Core{opts: o, log: o.Logger, limiter: ratelimit.New(o.Config.RateLimit.PerSecond, o.Config.RateLimit.Burst)}
}

// registerRewrappers registers the sources of every kind of value sealed by
// the barrier; each source lives with the package that owns the values. A
// test fails when a kind is sealed that no source covers.
func registerRewrappers(b *barrier.Barrier, st storage.Store) {
	b.RegisterRewrapper(hsm.SoftKeyKind, hsm.SoftKeyRewrapper(adapt.SealedBlobs(st.KeyBlobs())))
	b.RegisterRewrapper(auth.SettingKind, auth.SettingsRewrapper(st.Settings()))
	b.RegisterRewrapper(auth.SettingKind, storage.SealedSettings{Settings: st.Settings(), Keys: []string{settingAuditKey}})
	b.RegisterRewrapper(engines.DataSealKind, engines.DataRewrapper(st.Settings()))
	b.RegisterRewrapper(engines.SealKind, engines.MountRewrapper(st.Mounts()))
	b.RegisterRewrapper(lease.SealKind, lease.Rewrapper(st.Leases()))
	b.RegisterRewrapper(acme.EABSealKind, acme.EABRewrapper(st.ACME()))
	b.RegisterRewrapper(WrapKind, wrapRewrapper(st.Settings()))
	b.RegisterRewrapper(kvengine.SealKind, kvengine.Rewrapper(st.KV()))
	b.RegisterRewrapper(authmethod.SealKind, authmethod.Rewrapper(st.Settings()))
	b.RegisterRewrapper(authmethod.PendingSealKind, authmethod.PendingRewrapper(st.Settings()))
}

// Current returns the unsealed graph, or nil while sealed (or when c is
// nil).
func (c *Core) Current() *Unsealed {
	if c == nil {
		return nil // a server still being built
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.u
}

// Unsealed returns the unsealed graph, or ErrSealed.
func (c *Core) Unsealed() (*Unsealed, error) {
	if u := c.Current(); u != nil {
		return u, nil
	}
	return nil, ErrSealed
}

// Status is the seal state as `sigil status` shows it.
type Status struct {
	// Initialized: the seal config exists (always true for a dev server).
	Initialized bool
	// Unsealed is the graph, nil while sealed.
	Unsealed *Unsealed
	// Progress and Threshold count unseal shares (zero when uninitialised).
	Progress, Threshold int
}

// Sealed reports whether the status is sealed.
func (s Status) Sealed() bool { return s.Unsealed == nil }

// CA returns the root and the issuing intermediate, nil while sealed or
// before `sigil ca init`.
func (s Status) CA() (root, issuing *x509.Certificate) {
	if s.Unsealed == nil {
		return nil, nil
	}
	if chain := s.Unsealed.CA.Chain(); len(chain) > 0 {
		issuing = chain[0]
	}
	return s.Unsealed.CA.Root(), issuing
}

// Status returns the seal state, read at one instant.
func (c *Core) Status() Status {
	c.mu.RLock()
	u, p, initialized := c.u, c.progress, c.initialized || c.opts.Config.Dev
	c.mu.RUnlock()
	st := Status{Initialized: initialized, Unsealed: u}
	if p != nil {
		st.Threshold = p.Threshold()
		if u == nil {
			st.Progress = p.Count()
		}
	}
	return st
}

// Close seals: it stops the graph's background work, closes its
// components and locks the barrier. Storage and the HSM stay open.
func (c *Core) Close() {
	c.initMu.Lock()
	defer c.initMu.Unlock()
	c.mu.Lock()
	u := c.u
	c.u = nil
	c.mu.Unlock()
	if u != nil {
		c.deactivate(u)
	}
}

// Core's errors are domain errors (internal/errs): each transport maps
// their kinds once.

// ErrSealed is what every request that needs the graph gets while sealed.
var ErrSealed error = errs.New(errs.Unavailable, "sigil is sealed: unseal it with `sigil operator unseal` (see `sigil status`)")

func invalid(msg string) error      { return errs.New(errs.InvalidArgument, msg) }
func precondition(msg string) error { return errs.New(errs.FailedPrecondition, msg) }

// internalErr wraps err from step op; the caller sees only op. An error
// that already has a kind keeps it.
func internalErr(op string, err error) error {
	if _, ok := errs.As(err); ok {
		return err
	}
	return errs.Wrap(errs.Internal, op, err)
}

// Ready reports whether the server can serve requests, with each check's
// result ("ok" or what is wrong): storage answers, unsealed, custody
// answers, CA initialised.
func (c *Core) Ready(ctx context.Context) (bool, map[string]string) {
	ready, checks := c.ready(ctx)
	if healthy := c.opts.Wiring.ClusterHealthy; healthy != nil {
		checks["cluster"] = "ok"
		if err := healthy(); err != nil {
			ready, checks["cluster"] = false, err.Error()
		}
	}
	return ready, checks
}

// ready is Ready without the cluster's check.
func (c *Core) ready(ctx context.Context) (bool, map[string]string) {
	checks, ready := map[string]string{}, true
	check := func(name string, err error) {
		checks[name] = "ok"
		if err != nil {
			ready, checks[name] = false, err.Error()
		}
	}
	check("storage", c.opts.Store.Ping(ctx))
	u := c.Current()
	if u == nil {
		check("seal", errors.New("sealed"))
		return ready, checks
	}
	check("seal", nil)
	check("custody", u.Custody.Ping(ctx))
	if u.CA.Root() == nil {
		check("ca", errors.New("CA not initialised: run `sigil ca init`"))
	} else {
		check("ca", nil)
	}
	return ready, checks
}
