// Package lease is Sigil's lease manager: every secret an engine mints gets
// a lease MOUNT/ROLE/ID recorded in storage with its TTL, max TTL, the
// caller's identity and the secret's revocation data sealed by the barrier.
// Sigil revokes the secret on request or at expiry, across crashes and
// restarts.
//
// No credential is ever orphaned: the lease is written (with revocation data
// naming what will be created) before the engine creates anything, in state
// pending with a short expiry, the pending window of 2×MintTimeout; only
// once the secret exists is the lease made active with its real expiry. A
// crash in between leaves a pending lease that the expiry worker revokes
// when the window ends, and engines revoke idempotently, so a secret that
// was never created costs one no-op.
//
// The rule for every operation with a side effect outside Sigil (create,
// renew, revoke) is that a lease never claims less than the backend may
// hold:
//
//   - The operation runs under a server-side context, detached from the
//     caller's cancellation and bounded by its own timeout (MintTimeout
//     for a create, RevokeTimeout for renew and revoke). A client that
//     gives up changes nothing; if it is gone when the secret exists, the
//     lease is revoked through the normal path.
//   - Engines bound the backend's own work by that deadline (PostgreSQL:
//     statement_timeout in the create's transaction), so a create cannot
//     take effect after the pending window, even if Sigil dies.
//   - When a create fails with an unknown outcome (a timeout, a lost
//     connection: engines.ErrOutcomeUnknown), the secret may still appear.
//     Sigil revokes once at once, but the lease stays pending and due at
//     the end of its window; only the expiry worker's revocation after that,
//     retried with backoff until it succeeds (or MaxAttempts make the lease
//     irrevocable), closes it. A create that failed for certain is revoked
//     and closed at once. Every undo is logged with the lease id: info when
//     done, warning when deferred.
//   - A lease is marked revoked only after a revocation returned success. A
//     failed revocation (requested or at expiry) records its error and is
//     retried with backoff, ending irrevocable like an expiry would.
//   - Renew moves the backend first and storage second: if either step's
//     outcome is unknown the lease keeps the earlier expiry, and revocation
//     removes the secret whatever expiry the backend has.
//
// Leases are never loaded into memory as a whole: the expiry worker claims
// due leases in batches from storage (FOR UPDATE SKIP LOCKED on PostgreSQL,
// so several nodes never revoke one lease at once), and start-up reads
// nothing, so a node is ready at once however many leases exist.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/storage"
)

// Errors callers branch on.
var (
	ErrNotFound         = errors.New("lease: not found")
	ErrQuotaExceeded    = errors.New("lease: lease quota exceeded")
	ErrNotRenewable     = errors.New("lease: not renewable")
	ErrNotActive        = errors.New("lease: not active")
	ErrMaxTTL           = errors.New("lease: max TTL reached")
	ErrMintFailed       = errors.New("lease: engine could not create the secret")
	ErrInvalidRequest   = errors.New("lease: invalid request")
	ErrRevocationFailed = errors.New("lease: revocation failed")
	// ErrPending: the lease's mint has not completed (or failed with an
	// unknown outcome); the expiry worker revokes it when its pending
	// window ends. It wraps ErrNotActive.
	ErrPending = fmt.Errorf("%w: pending", ErrNotActive)
)

// SealKind is the barrier record kind of a lease's revocation data; the
// record id is the lease id.
const SealKind = "lease-revocation"

// Sealer encrypts values bound to a record; *barrier.Barrier satisfies it.
type Sealer interface {
	Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error)
}

// Engines resolves mounts to engines; *engines.Mounts satisfies it. Bind
// refuses a mount whose engine does not mint leased secrets
// (engines.Leased), Revoker one whose engine cannot revoke them
// (engines.Revoker).
type Engines interface {
	Bind(ctx context.Context, mount, role string) (*engines.Binding, error)
	Revoker(ctx context.Context, mount string) (engines.Revoker, error)
}

// Config configures a Manager. Zero durations and counts take the defaults
// in brackets.
type Config struct {
	Store   storage.Store // required
	Sealer  Sealer        // required
	Engines Engines       // required
	Logger  *slog.Logger
	// Now is the clock [time.Now]. Lease times (issue, expiry, due, claim,
	// backoff, pruning) are read from it; timeouts of calls to engines and
	// storage, and the times storage stamps itself (a lease's closing,
	// which pruning goes by), are real time.
	Now func() time.Time

	// MintTimeout bounds Engine.Create, counted from the lease's issue
	// [20s]. The pending window, during which a freshly written lease
	// cannot expire, is twice this: the create's backend work ends within
	// MintTimeout (engines bound it there), and the second half is margin
	// for its commit, so the worker never revokes a secret that may still
	// be created.
	MintTimeout time.Duration
	// RenewIncrement is the renewal used when a caller names none [1h].
	RenewIncrement time.Duration

	// Expiry worker.
	PollInterval  time.Duration // between claims when idle [1s]
	BatchSize     int           // leases claimed at once [500]
	Concurrency   int           // revocations in flight per node [8]
	RevokeTimeout time.Duration // per revocation attempt a caller asked for [30s]
	// WorkerRevokeTimeout bounds each revocation the expiry worker runs
	// [min(RevokeTimeout, 5s)]. It is short so that ClaimTimeout can be
	// short: a node that dies holding claims (kill -9) leaves them to its
	// peers after ClaimTimeout, and a claim must outlast the revocations
	// started under it.
	WorkerRevokeTimeout time.Duration
	// ClaimTimeout is how long the worker's claim on a batch holds [15s];
	// > WorkerRevokeTimeout. A caller's revocation claims its lease for
	// max(ClaimTimeout, 2·RevokeTimeout).
	ClaimTimeout time.Duration
	MaxAttempts  int           // failed attempts before irrevocable [8]
	BackoffBase  time.Duration // first retry delay [2s]
	BackoffMax   time.Duration // longest retry delay [10m]
	// RevokedRetention is how long a revoked lease stays (for lookup) before
	// the worker prunes it [24h]; negative keeps revoked leases forever.
	// Irrevocable leases are never pruned.
	RevokedRetention time.Duration
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.MintTimeout, 20*time.Second)
	def(&c.RenewIncrement, time.Hour)
	def(&c.PollInterval, time.Second)
	def(&c.RevokeTimeout, 30*time.Second)
	def(&c.WorkerRevokeTimeout, min(c.RevokeTimeout, 5*time.Second))
	def(&c.ClaimTimeout, 15*time.Second)
	def(&c.BackoffBase, 2*time.Second)
	def(&c.BackoffMax, 10*time.Minute)
	if c.ClaimTimeout <= c.WorkerRevokeTimeout {
		c.ClaimTimeout = 2 * c.WorkerRevokeTimeout
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.RevokedRetention == 0 {
		c.RevokedRetention = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Lease is the public view of a lease (without its sealed revocation data).
type Lease struct {
	ID            string
	Mount         string
	Role          string
	Identity      string
	IssuedAt      time.Time
	ExpiresAt     time.Time
	MaxExpiresAt  time.Time
	Renewable     bool
	State         storage.LeaseState
	Attempts      int
	NextAttemptAt time.Time
	LastError     string
	// Owner is the identity that minted the lease ("" for leases from
	// before owners were recorded).
	Owner string
}

// OwnedBy reports whether owner may manage the lease as its own. A lease
// without a recorded owner belongs to nobody (administrators only).
func (l *Lease) OwnedBy(owner string) bool { return l.Owner != "" && l.Owner == owner }

// TTL is the time left at now (0 once expired).
func (l *Lease) TTL(now time.Time) time.Duration { return max(l.ExpiresAt.Sub(now), 0) }

func view(s *storage.Lease) *Lease {
	return &Lease{
		ID: s.ID, Mount: s.Mount, Role: s.Role, Identity: s.Identity,
		IssuedAt: s.IssuedAt, ExpiresAt: s.ExpiresAt, MaxExpiresAt: s.MaxExpiresAt,
		Renewable: s.Renewable, State: s.State, Attempts: s.Attempts,
		NextAttemptAt: s.NextAttemptAt, LastError: s.LastError, Owner: s.Owner,
	}
}

// Stats are the manager's counters since it was built, for metrics.
type Stats struct {
	Minted        uint64
	Revoked       uint64 // by request or expiry
	Expired       uint64 // revoked by the expiry worker
	Failures      uint64 // failed revocation attempts
	Irrevocable   uint64 // leases the worker gave up on
	ForcedRevokes uint64
}

// Manager mints, renews and revokes leases and runs the expiry worker.
type Manager struct {
	cfg Config
	log *slog.Logger

	quotaMu sync.Mutex // serialises quota checks with their Put on this node

	minted, revoked, expired, failures, irrevocable, forced atomic.Uint64

	runMu  sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a manager; call Start to run the expiry worker.
func New(cfg Config) (*Manager, error) {
	if cfg.Store == nil || cfg.Sealer == nil || cfg.Engines == nil {
		return nil, fmt.Errorf("%w: Store, Sealer and Engines are required", ErrInvalidRequest)
	}
	cfg.defaults()
	return &Manager{cfg: cfg, log: cfg.Logger}, nil
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	return Stats{
		Minted: m.minted.Load(), Revoked: m.revoked.Load(), Expired: m.expired.Load(),
		Failures: m.failures.Load(), Irrevocable: m.irrevocable.Load(), ForcedRevokes: m.forced.Load(),
	}
}

// now is the manager's clock, in UTC to the microsecond storage keeps.
func (m *Manager) now() time.Time { return m.cfg.Now().UTC().Truncate(time.Microsecond) }

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns MOUNT/ROLE/RANDOM with 128 random bits.
func newID(mount, role string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return mount + "/" + role + "/" + idEncoding.EncodeToString(b[:])
}

// MintRequest asks for a secret under Mount/Role.
type MintRequest struct {
	Mount    string
	Role     string
	Identity string
	// Owner is the stable identity Sigil authenticated for the caller
	// ("token:ID" or a SPIFFE ID), recorded so that only it (or an
	// administrator) manages the lease; never a value the client asserts.
	Owner string
	TTL   time.Duration // 0: the role's default
}

// Minted is a new secret and its lease. Data is secret: the caller seals it
// to the requester's key (package envelope) and never logs it.
type Minted struct {
	Lease *Lease
	Data  map[string]string
	// Public may travel in clear beside the sealed Data (engines.Secret).
	Public map[string]string
}

// Mint creates a secret and its lease, never leaving a secret without a
// lease: the lease is stored before the engine creates anything, and if
// anything fails after creation the secret is revoked before returning.
func (m *Manager) Mint(ctx context.Context, req MintRequest) (*Minted, error) {
	if req.TTL < 0 {
		return nil, fmt.Errorf("%w: negative TTL", ErrInvalidRequest)
	}
	if err := engines.CheckPath(req.Mount); err != nil {
		return nil, err
	}
	if err := engines.CheckRoleName(req.Role); err != nil {
		return nil, err
	}
	b, err := m.cfg.Engines.Bind(ctx, req.Mount, req.Role)
	if err != nil {
		return nil, err
	}
	issued := m.now()
	// The create's deadline is real time whatever the clock: it bounds
	// real work in the backend.
	deadline := time.Now().Add(m.cfg.MintTimeout)
	id := newID(req.Mount, req.Role)
	p, err := b.Engine.Prepare(ctx, b.Role, engines.MintRequest{Role: req.Role, LeaseID: id, Identity: req.Identity, TTL: req.TTL, Now: issued})
	if err != nil {
		return nil, fmt.Errorf("lease: prepare %s/%s: %w", req.Mount, req.Role, err)
	}
	if !p.ExpiresAt.After(issued) {
		return nil, fmt.Errorf("%w: engine gave an expiry in the past", ErrInvalidRequest)
	}
	sealed, err := m.cfg.Sealer.Seal(ctx, SealKind, id, p.Revocation)
	if err != nil {
		return nil, fmt.Errorf("lease: seal revocation data: %w", err)
	}
	sl := &storage.Lease{
		ID: id, Mount: req.Mount, Role: req.Role, Identity: req.Identity, Owner: req.Owner,
		IssuedAt: issued,
		// Pending: due only after the window in which Create may still
		// take effect.
		ExpiresAt:        issued.Add(2 * m.cfg.MintTimeout),
		MaxExpiresAt:     p.MaxExpiresAt.UTC().Truncate(time.Microsecond),
		Renewable:        p.Renewable,
		SealedRevocation: sealed,
		State:            storage.LeasePending,
	}
	if err := m.putWithQuota(ctx, b, sl); err != nil {
		return nil, err
	}

	// From here on the caller's cancellation changes nothing: a create cut
	// short by it would leave the backend in an unknown state.
	sctx := context.WithoutCancel(ctx)
	cctx, cancel := context.WithDeadline(sctx, deadline)
	sec, err := b.Engine.Create(cctx, p)
	expired := cctx.Err() != nil
	cancel()
	if err != nil {
		certain := !expired && !errors.Is(err, engines.ErrOutcomeUnknown) &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
		m.undo(sctx, b.Engine, sl, p.Revocation, "mint failed: "+err.Error(), certain)
		return nil, fmt.Errorf("%w: %s/%s: %w", ErrMintFailed, req.Mount, req.Role, err)
	}
	expires := p.ExpiresAt.UTC().Truncate(time.Microsecond)
	actx, cancel := context.WithTimeout(sctx, recordTimeout)
	err = m.cfg.Store.Leases().Activate(actx, id, expires)
	cancel()
	if err != nil {
		// The secret exists for certain but its lease may not say so (or
		// the worker is revoking it): take it back.
		clear(sec.Data)
		m.undo(sctx, b.Engine, sl, p.Revocation, "activation failed: "+err.Error(), true)
		return nil, fmt.Errorf("lease: activate %s: %w", id, err)
	}
	sl.ExpiresAt, sl.State = expires, storage.LeaseActive
	m.minted.Add(1)
	if cerr := ctx.Err(); cerr != nil {
		// Nobody is left to receive the secret.
		clear(sec.Data)
		if rerr := m.Revoke(sctx, id); rerr != nil {
			m.log.Warn("lease: caller left before its secret was delivered; revocation failed and will be retried", "lease", id, "error", rerr)
		} else {
			m.log.Info("lease: caller left before its secret was delivered; revoked", "lease", id)
		}
		return nil, fmt.Errorf("lease: mint %s: %w", id, cerr)
	}
	m.log.Info("lease minted", "lease", id, "expires", expires)
	return &Minted{Lease: view(sl), Data: sec.Data, Public: sec.Public}, nil
}

// NoExpiry is the lifetime Register gives a lease without an expiry: the
// secret lives until revoked.
const NoExpiry = 100 * 365 * 24 * time.Hour

// RegisterRequest records a lease for a secret Sigil made itself, outside
// any engine's Create (an API token). The lease is MOUNT/ROLE/NAME.
type RegisterRequest struct {
	Mount string
	Role  string
	// Name is the lease id's last segment, chosen by the caller so the
	// lease can be found from the secret (a token's id).
	Name     string
	Identity string
	// Owner is the stable identity Sigil authenticated for the caller, as
	// in MintRequest.
	Owner string
	// ExpiresAt ends the lease; zero: NoExpiry from now.
	ExpiresAt time.Time
	// MaxExpiresAt, when after ExpiresAt, makes the lease renewable up to
	// it; zero (or not after ExpiresAt): the lease is not renewable.
	MaxExpiresAt time.Time
	// Revocation is what the mount's engine (an engines.Revoker) gets to
	// revoke the secret; it is stored sealed.
	Revocation []byte
}

// Register records an active lease for a secret that already exists, so it
// is revoked like any other: on request, by prefix, or by the expiry
// worker through the mount's engine, which must be an engines.Revoker. The
// caller destroys the secret itself if Register fails: no lease exists
// then, or (an unknown outcome) one whose revocation finds nothing to do.
func (m *Manager) Register(ctx context.Context, req RegisterRequest) (*Lease, error) {
	if err := engines.CheckPath(req.Mount); err != nil {
		return nil, err
	}
	if err := engines.CheckRoleName(req.Role); err != nil {
		return nil, err
	}
	if err := engines.CheckRoleName(req.Name); err != nil {
		return nil, fmt.Errorf("%w: lease name %q", ErrInvalidRequest, req.Name)
	}
	// A lease the worker could not revoke would end irrevocable.
	if _, err := m.cfg.Engines.Revoker(ctx, req.Mount); err != nil {
		return nil, fmt.Errorf("lease: register under %s: %w", req.Mount, err)
	}
	issued := m.now()
	exp := req.ExpiresAt.UTC().Truncate(time.Microsecond)
	if exp.IsZero() {
		exp = issued.Add(NoExpiry)
	}
	if !exp.After(issued) {
		return nil, fmt.Errorf("%w: expiry %s is not in the future", ErrInvalidRequest, exp.Format(time.RFC3339))
	}
	maxExp, renewable := exp, false
	if mx := req.MaxExpiresAt.UTC().Truncate(time.Microsecond); !req.ExpiresAt.IsZero() && mx.After(exp) {
		maxExp, renewable = mx, true
	}
	id := req.Mount + "/" + req.Role + "/" + req.Name
	sealed, err := m.cfg.Sealer.Seal(ctx, SealKind, id, req.Revocation)
	if err != nil {
		return nil, fmt.Errorf("lease: seal revocation data: %w", err)
	}
	sl := &storage.Lease{
		ID: id, Mount: req.Mount, Role: req.Role, Identity: req.Identity, Owner: req.Owner,
		IssuedAt: issued, ExpiresAt: exp, MaxExpiresAt: maxExp, Renewable: renewable,
		SealedRevocation: sealed, State: storage.LeaseActive,
	}
	if err := m.cfg.Store.Leases().Put(ctx, sl); err != nil {
		return nil, fmt.Errorf("lease: store %s: %w", id, err)
	}
	m.minted.Add(1)
	m.log.Info("lease registered", "lease", id, "expires", exp, "renewable", renewable)
	return view(sl), nil
}

// putWithQuota stores the pending lease, refusing it when the mount or role
// is at its max_leases. Count and insert share one transaction; on SQLite
// that is exact across processes, on PostgreSQL it is exact per node (the
// mutex) and may overshoot by a few leases when several nodes mint into the
// last slots at the same instant.
func (m *Manager) putWithQuota(ctx context.Context, b *engines.Binding, sl *storage.Lease) error {
	if b.MountMaxLeases > 0 || b.RoleMaxLeases > 0 {
		m.quotaMu.Lock()
		defer m.quotaMu.Unlock()
	}
	err := m.cfg.Store.InTx(ctx, func(tx storage.Repos) error {
		// The mount must outlive this transaction: a Disable that deletes
		// it meanwhile either waits and then sees this lease (and refuses),
		// or went first, and the mint stops here, before anything exists.
		if err := tx.Mounts().Hold(ctx, b.Mount); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("%w: %s was disabled", engines.ErrMountNotFound, b.Mount)
			}
			return err
		}
		check := func(limit int, prefix, what string) error {
			if limit <= 0 {
				return nil
			}
			n, err := tx.Leases().CountActive(ctx, prefix)
			if err != nil {
				return err
			}
			if n >= limit {
				return fmt.Errorf("%w: %s %s has %d of max_leases=%d", ErrQuotaExceeded, what, strings.TrimSuffix(prefix, "/"), n, limit)
			}
			return nil
		}
		if err := check(b.MountMaxLeases, engines.LeasePrefix(b.Mount), "mount"); err != nil {
			return err
		}
		if err := check(b.RoleMaxLeases, engines.RoleLeasePrefix(b.Mount, b.Role.Name), "role"); err != nil {
			return err
		}
		return tx.Leases().Put(ctx, sl)
	})
	if err != nil {
		if errors.Is(err, ErrQuotaExceeded) || errors.Is(err, engines.ErrMountNotFound) {
			return err
		}
		return fmt.Errorf("lease: store %s: %w", sl.ID, err)
	}
	return nil
}

// undo takes back the secret of a mint that did not complete. It revokes at
// once; if the create's outcome is certain (it failed, or it succeeded and
// the revocation came after it) and that revocation succeeded, the lease is
// closed. Otherwise the lease stays pending, due at the end of its pending
// window (after which the create can no longer take effect), and the
// expiry worker revokes it then, retrying until it is gone: nothing is
// orphaned, even by a create that commits after it was given up on.
func (m *Manager) undo(ctx context.Context, eng engines.Revoker, l *storage.Lease, revocation []byte, why string, certain bool) {
	rctx, cancel := context.WithTimeout(ctx, m.cfg.RevokeTimeout)
	rerr := eng.Revoke(rctx, revocation)
	cancel()
	wctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	why = truncate(why, 800)
	if rerr == nil && certain {
		if err := m.cfg.Store.Leases().SetState(wctx, l.ID, storage.LeaseRevoked, 1, time.Time{}, why); err != nil {
			// Still pending: the worker revokes it (a no-op) at its due time.
			m.log.Warn("lease: undo of failed mint done but not recorded; deferred to the expiry worker", "lease", l.ID, "due", l.ExpiresAt, "error", err)
			return
		}
		m.log.Info("lease: undo of failed mint done", "lease", l.ID, "reason", why)
		return
	}
	note := why + "; revocation deferred until the create can no longer take effect"
	if !certain {
		note = why + "; outcome unknown, revocation deferred until the create can no longer take effect"
	}
	if rerr != nil {
		note += " (immediate revocation: " + rerr.Error() + ")"
	}
	// The lease is pending with its window's expiry already: record why.
	if err := m.cfg.Store.Leases().SetState(wctx, l.ID, storage.LeasePending, 0, time.Time{}, truncate(note, 1000)); err != nil {
		m.log.Warn("lease: recording a deferred undo", "lease", l.ID, "error", err)
	}
	m.log.Warn("lease: undo of failed mint deferred to the expiry worker", "lease", l.ID, "due", l.ExpiresAt,
		"outcome_known", certain, "reason", why, "revoke_error", rerr)
}

func (m *Manager) get(ctx context.Context, id string) (*storage.Lease, error) {
	l, err := m.cfg.Store.Leases().Get(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("lease: get %s: %w", id, err)
	}
	return l, nil
}

// Lookup returns a lease.
func (m *Manager) Lookup(ctx context.Context, id string) (*Lease, error) {
	l, err := m.get(ctx, id)
	if err != nil {
		return nil, err
	}
	return view(l), nil
}

// ListOptions selects leases. Without Irrevocable the open leases are
// listed: active ones and pending ones (mid-mint, or a mint whose undo is
// deferred), each with its state.
type ListOptions struct {
	Prefix      string
	Irrevocable bool
	After       string // cursor from a previous page
	Limit       int    // default 100, at most 1000
}

// List returns one page of leases ordered by id and the next cursor ("" at
// the end).
func (m *Manager) List(ctx context.Context, o ListOptions) ([]*Lease, string, error) {
	var ls []*storage.Lease
	var next string
	var err error
	if o.Irrevocable {
		ls, next, err = m.cfg.Store.Leases().List(ctx, storage.LeaseFilter{Prefix: o.Prefix, State: storage.LeaseIrrevocable, After: o.After, Limit: o.Limit})
	} else {
		ls, next, err = m.listOpen(ctx, o)
	}
	if err != nil {
		return nil, "", fmt.Errorf("lease: list: %w", err)
	}
	out := make([]*Lease, len(ls))
	for i, l := range ls {
		out[i] = view(l)
	}
	return out, next, nil
}

// listOpen returns one page of active and pending leases merged by id: the
// first limit of each state's page cover the first limit of their union.
func (m *Manager) listOpen(ctx context.Context, o ListOptions) ([]*storage.Lease, string, error) {
	limit := o.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	f := storage.LeaseFilter{Prefix: o.Prefix, State: storage.LeaseActive, After: o.After, Limit: limit}
	active, nextA, err := m.cfg.Store.Leases().List(ctx, f)
	if err != nil {
		return nil, "", err
	}
	f.State = storage.LeasePending
	pending, nextP, err := m.cfg.Store.Leases().List(ctx, f)
	if err != nil {
		return nil, "", err
	}
	out := make([]*storage.Lease, 0, len(active)+len(pending))
	i, j := 0, 0
	for i < len(active) || j < len(pending) {
		if j == len(pending) || (i < len(active) && active[i].ID < pending[j].ID) {
			out, i = append(out, active[i]), i+1
		} else {
			out, j = append(out, pending[j]), j+1
		}
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	} else if (nextA != "" || nextP != "") && len(out) > 0 {
		next = out[len(out)-1].ID
	}
	return out, next, nil
}

// Renew extends an active, renewable lease to now+increment (the default
// increment if 0), never past its max TTL, first in the backend and then in
// storage.
func (m *Manager) Renew(ctx context.Context, id string, increment time.Duration) (*Lease, error) {
	if increment < 0 {
		return nil, fmt.Errorf("%w: negative increment", ErrInvalidRequest)
	}
	if increment == 0 {
		increment = m.cfg.RenewIncrement
	}
	l, err := m.get(ctx, id)
	if err != nil {
		return nil, err
	}
	t := m.now()
	switch {
	case l.State != storage.LeaseActive:
		return nil, fmt.Errorf("%w: %s is %s", ErrNotActive, id, l.State)
	case !l.ExpiresAt.After(t):
		return nil, fmt.Errorf("%w: %s has expired", ErrNotActive, id)
	case !l.Renewable:
		return nil, fmt.Errorf("%w: %s", ErrNotRenewable, id)
	}
	exp := t.Add(increment)
	if !l.MaxExpiresAt.IsZero() && exp.After(l.MaxExpiresAt) {
		exp = l.MaxExpiresAt
	}
	if !exp.After(t) {
		return nil, fmt.Errorf("%w: %s", ErrMaxTTL, id)
	}
	eng, rev, err := m.revocation(ctx, l)
	if err != nil {
		return nil, err
	}
	defer clear(rev)
	// Backend first, then storage, neither cut short by the caller: an
	// unknown outcome leaves the lease at its earlier expiry, the safe side.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.RevokeTimeout)
	defer cancel()
	if err := eng.Renew(sctx, rev, exp); err != nil {
		return nil, fmt.Errorf("lease: renew %s in backend: %w", id, err)
	}
	// Storage takes the new expiry only if the lease is as it was read: not
	// claimed by a revocation, its expiry unmoved. A revocation that began
	// meanwhile (the worker's, or one by request) wins, and this renewal is
	// refused rather than reported as granted.
	if err := m.cfg.Store.Leases().Extend(sctx, id, l.ExpiresAt, exp); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotActive, id, err)
		}
		return nil, fmt.Errorf("lease: renew %s: %w", id, err)
	}
	l.ExpiresAt = exp
	m.log.Info("lease renewed", "lease", id, "expires", exp)
	return view(l), nil
}

// revocation returns the lease's engine and opened revocation data.
func (m *Manager) revocation(ctx context.Context, l *storage.Lease) (engines.Revoker, []byte, error) {
	eng, err := m.cfg.Engines.Revoker(ctx, l.Mount)
	if err != nil {
		return nil, nil, fmt.Errorf("lease: engine for %s: %w", l.ID, err)
	}
	rev, err := m.cfg.Sealer.Open(ctx, SealKind, l.ID, l.SealedRevocation)
	if err != nil {
		return nil, nil, fmt.Errorf("lease: open revocation data of %s: %w", l.ID, err)
	}
	return eng, rev, nil
}

// revokeOne runs the engine revocation of l.
func (m *Manager) revokeOne(ctx context.Context, l *storage.Lease) error {
	eng, rev, err := m.revocation(ctx, l)
	if err != nil {
		return err
	}
	defer clear(rev)
	return eng.Revoke(ctx, rev)
}

// Revoke revokes a lease now. Revoking a revoked lease succeeds; an
// irrevocable lease gets one more attempt. A pending lease whose window is
// still open is refused with ErrPending: its create may yet take effect,
// and the expiry worker revokes it when the window ends.
//
// The revocation is not cut short by the caller. If it fails, the failure
// is recorded (attempts, last error) and the lease ends now: it is due at
// once and the expiry worker retries it with backoff, marking it
// irrevocable after MaxAttempts, as for an expiry.
func (m *Manager) Revoke(ctx context.Context, id string) error {
	l, err := m.get(ctx, id)
	if err != nil {
		return err
	}
	switch {
	case l.State == storage.LeaseRevoked:
		return nil
	case l.State == storage.LeasePending && m.now().Before(l.ExpiresAt):
		return fmt.Errorf("%w: %s: its mint has not completed; it is revoked at %s unless it becomes active",
			ErrPending, id, l.ExpiresAt.Format(time.RFC3339))
	}
	sctx := context.WithoutCancel(ctx)
	if l.State.Open() {
		// The lease ends now, and the worker leaves it to this revocation
		// while it runs; if this node dies meanwhile, the worker takes it
		// up once the claim lapses (at once on a restarted lone node). A
		// claim held elsewhere (the worker revoking it right now) is no
		// reason not to revoke: revocation is idempotent.
		t := m.now()
		if err := m.cfg.Store.Leases().StartRevoke(sctx, id, t, t.Add(max(m.cfg.ClaimTimeout, 2*m.cfg.RevokeTimeout))); err != nil && !errors.Is(err, storage.ErrConflict) {
			return fmt.Errorf("lease: start revocation of %s: %w", id, err)
		}
	}
	rctx, cancel := context.WithTimeout(sctx, m.cfg.RevokeTimeout)
	rerr := m.revokeOne(rctx, l)
	cancel()
	wctx, cancel := context.WithTimeout(sctx, recordTimeout)
	defer cancel()
	if rerr != nil {
		m.failures.Add(1)
		if err := m.recordRevokeFailure(wctx, l, rerr); err != nil {
			// Refused when the worker, holding the lease meanwhile, revoked
			// it: then the revocation asked for is done.
			if errors.Is(err, storage.ErrConflict) {
				if cur, gerr := m.cfg.Store.Leases().Get(wctx, id); gerr == nil && cur.State == storage.LeaseRevoked {
					m.log.Info("lease revoked meanwhile by the expiry worker", "lease", id)
					return nil
				}
			}
			m.log.Error("lease: recording a failed revocation", "lease", id, "error", err)
		}
		return fmt.Errorf("%w: %s: %w", ErrRevocationFailed, id, rerr)
	}
	if err := m.cfg.Store.Leases().SetState(wctx, id, storage.LeaseRevoked, l.Attempts, time.Time{}, ""); err != nil {
		return fmt.Errorf("lease: record revocation of %s: %w", id, err)
	}
	m.revoked.Add(1)
	m.log.Info("lease revoked", "lease", id)
	return nil
}

// recordRevokeFailure records a failed requested revocation of l: an open
// lease ends now and is retried with backoff (irrevocable after
// MaxAttempts); an irrevocable one keeps its state with the new error.
func (m *Manager) recordRevokeFailure(ctx context.Context, l *storage.Lease, rerr error) error {
	attempts := l.Attempts + 1
	msg := truncate(rerr.Error(), 1000)
	if !l.State.Open() || attempts >= m.cfg.MaxAttempts {
		if l.State.Open() {
			m.irrevocable.Add(1)
			m.log.Error("lease irrevocable: giving up", "lease", l.ID, "attempts", attempts, "error", rerr)
		}
		return m.cfg.Store.Leases().SetState(ctx, l.ID, storage.LeaseIrrevocable, attempts, time.Time{}, msg)
	}
	// StartRevoke ended the lease: Renew and introspection refuse it, and
	// releasing the claim hands its retries to the worker.
	next := m.now().Add(m.backoff(attempts))
	err := m.cfg.Store.Leases().SetState(ctx, l.ID, l.State, attempts, next, msg)
	if err == nil {
		m.log.Warn("lease revocation failed, will retry", "lease", l.ID, "attempts", attempts, "next", next, "error", rerr)
	}
	return err
}

// ForcedPrefix starts LastError of a lease revoked with RevokeForce, so it
// stays visible that the backend may still hold the secret.
const ForcedPrefix = "forced: "

// RevokeForce forgets a lease even if the backend cannot revoke its secret
// (the database is gone, the engine was removed). It tries the backend once
// and records the outcome in LastError, prefixed "forced: ".
func (m *Manager) RevokeForce(ctx context.Context, id string) error {
	l, err := m.get(ctx, id)
	if err != nil {
		return err
	}
	if l.State == storage.LeaseRevoked {
		return nil
	}
	note := ForcedPrefix + "backend revocation succeeded"
	tctx, cancel := context.WithTimeout(ctx, m.cfg.RevokeTimeout)
	rerr := m.revokeOne(tctx, l)
	cancel()
	if rerr != nil {
		note = truncate(ForcedPrefix+"revoked without backend confirmation: "+rerr.Error(), 1000)
	}
	if err := m.cfg.Store.Leases().SetState(ctx, id, storage.LeaseRevoked, l.Attempts, time.Time{}, note); err != nil {
		return fmt.Errorf("lease: record forced revocation of %s: %w", id, err)
	}
	m.forced.Add(1)
	m.log.Warn("lease force-revoked", "lease", id, "backend_ok", rerr == nil)
	return nil
}

// RevokePrefix revokes every open lease whose id starts with prefix
// (which must end in "/" at a mount or role boundary, e.g. "db/" or
// "db/readonly/"), page by page, and returns how many it revoked. Failures
// do not stop it; they are returned joined (the first few). Pending leases
// whose window is still open are skipped: the expiry worker revokes them.
func (m *Manager) RevokePrefix(ctx context.Context, prefix string) (int, error) {
	if prefix == "" {
		return 0, fmt.Errorf("%w: empty prefix", ErrInvalidRequest)
	}
	var (
		n     int
		errs  []error
		nerrs int
		after string
		mu    sync.Mutex
		sem   = make(chan struct{}, m.cfg.Concurrency)
		wg    sync.WaitGroup
		opts  = ListOptions{Prefix: prefix, Limit: 200}
	)
	for {
		opts.After = after
		page, next, err := m.listOpen(ctx, opts)
		if err != nil {
			wg.Wait()
			return n, errors.Join(append(errs, fmt.Errorf("lease: revoke prefix %s: %w", prefix, err))...)
		}
		for _, l := range page {
			if l.State == storage.LeasePending && m.now().Before(l.ExpiresAt) {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func(id string) {
				defer func() { <-sem; wg.Done() }()
				err := m.Revoke(ctx, id)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					nerrs++
					if len(errs) < 5 {
						errs = append(errs, err)
					}
					return
				}
				n++
			}(l.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	wg.Wait()
	if nerrs > len(errs) {
		errs = append(errs, fmt.Errorf("lease: and %d more failures", nerrs-len(errs)))
	}
	return n, errors.Join(errs...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
