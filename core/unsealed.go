package core

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"log/syslog"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/keys"
	kvengine "github.com/sigil-ca/sigil/engines/kv"
	pgengine "github.com/sigil-ca/sigil/engines/postgres"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/registration"
	"github.com/sigil-ca/sigil/storage"
)

// Unsealed is the component graph that exists only while unsealed.
type Unsealed struct {
	Custody  hsm.Custody
	CA       *ca.Authority
	Tokens   *auth.Tokens
	Policies *policy.Manager
	Audit    *audit.Logger
	// AuditFile is the file sink, if configured, reopened on SIGHUP.
	AuditFile *audit.FileSink
	Mounts    *engines.Mounts
	Leases    *lease.Manager
	// ACME is nil when ACME is disabled.
	ACME *acme.Server
	// AuthMethods are the mounted auth methods (jwt, oidc, ldap).
	AuthMethods *authmethod.Manager
	// JWTSVIDs signs agents' JWT-SVIDs and rotates their key.
	JWTSVIDs *registration.JWTSigner

	log *slog.Logger
	// closeCustody is set when custody is owned by this graph (the software
	// keystore); an HSM session outlives sealing.
	closeCustody bool
	// wraps prunes dead response-wrapping slots.
	wraps *wrapPruner
	// stop ends the background work Run does for this graph and waits.
	stop func()
	// once runs cluster-wide singletons (Wiring.Once); nil: locally.
	once func(ctx context.Context, name string, fn func(context.Context) error) error
}

// acmePruneEvery and acmePruneAge: expired ACME objects are deleted hourly,
// a day after they expire.
const (
	acmePruneEvery = time.Hour
	acmePruneAge   = 24 * time.Hour
)

// Run does the graph's background work until ctx ends: CRL refresh and
// pruning in the CA, the lease expiry worker, ACME pruning and pruning of
// dead response-wrapping slots. Each is a
// func(ctx) error task; the first to fail ends the others.
func (u *Unsealed) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	// Pruning and CRL generation are work for one node of a cluster, not
	// for each.
	once := u.once
	if once == nil {
		once = func(ctx context.Context, _ string, fn func(context.Context) error) error { return fn(ctx) }
	}
	g.Go(func() error { return u.CA.Run(ctx, once) })
	// The expiry worker claims due leases from storage in batches, so it
	// never holds every lease in memory and a restart is ready at once.
	g.Go(func() error { return u.Leases.Run(ctx) })
	if u.ACME != nil {
		g.Go(func() error { return once(ctx, "acme-prune", u.pruneACME) })
	}
	g.Go(func() error {
		return once(ctx, "wrap-prune", func(ctx context.Context) error { return u.wraps.run(ctx, wrapPruneInterval) })
	})
	return g.Wait()
}

func (u *Unsealed) pruneACME(ctx context.Context) error {
	t := time.NewTicker(acmePruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if _, err := u.ACME.Prune(ctx, acmePruneAge); err != nil && ctx.Err() == nil {
			u.log.Warn("ACME prune failed", "err", err)
		}
	}
}

// startBackground runs Run until deactivation. It is not tied to the
// request that unsealed the server.
func (u *Unsealed) startBackground() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := u.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			u.log.Warn("background work stopped", "err", err)
		}
	}()
	u.stop = func() {
		cancel()
		<-done
	}
}

// activate unseals the barrier with master and builds the graph on it. On
// error everything built so far is closed and the barrier locked again.
func (c *Core) activate(ctx context.Context, master []byte) (_ *Unsealed, err error) {
	o := c.opts
	if err := o.Barrier.Unseal(ctx, master); err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	u := &Unsealed{log: c.log, once: o.Wiring.Once}
	defer func() {
		if err != nil {
			c.deactivate(u)
		}
	}()
	if o.HSM != nil {
		u.Custody = o.HSM
	} else {
		u.Custody, u.closeCustody = hsm.NewSoft(adapt.Blobs(o.Store.KeyBlobs()), o.Barrier, c.log), true
	}
	u.JWTSVIDs = registration.NewJWTSigner(u.Custody, o.Store.Settings(), registration.JWTKeyPolicy{
		Rotation: time.Duration(o.Config.SVID.JWTKeyRotation), Lead: time.Duration(o.Config.SVID.JWTKeyLead), Logger: c.log})
	caCfg := ca.Config{PublicURL: o.Config.PublicURL, TrustDomain: o.Config.CA.TrustDomain, IssuanceRefused: o.IssuanceRefused}
	if path := o.Config.CA.CFSSLProfiles; path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("ca.cfssl_profiles: %w", err)
		}
		if caCfg.Profiles, err = ca.ProfilesFromCFSSL(data); err != nil {
			return nil, fmt.Errorf("ca.cfssl_profiles %s: %w", path, err)
		}
	}
	if u.CA, err = ca.New(u.Custody, o.Store, caCfg, c.log); err != nil {
		return nil, fmt.Errorf("open CA: %w", err)
	}
	if err := u.CA.Load(ctx); err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	u.Tokens = auth.NewTokens(o.Store, o.Barrier)
	u.Policies = policy.NewManager(o.Store.Policies(), 5*time.Second)
	if u.Audit, u.AuditFile, err = c.openAudit(ctx, u.Custody); err != nil {
		return nil, err
	}
	reg := engines.NewRegistry()
	for _, register := range []func(*engines.Registry) error{pgengine.Register, tokens.Register, transit.Register, keys.Register, kvengine.Registrar(o.Store.KV(), o.Barrier)} {
		if err := register(reg); err != nil {
			return nil, err
		}
	}
	// API tokens are leases too: their engine revokes a token when its
	// lease ends (package auth owns it).
	if err := auth.RegisterLeaseEngine(reg, u.Tokens); err != nil {
		return nil, err
	}
	svc := engines.Services{Custody: u.Custody, Certificates: caCertificates{u.CA}}
	if o.HSM != nil {
		svc.Managed = p11Managed{o.HSM}
	}
	u.Mounts = engines.NewMounts(o.Store, o.Barrier, reg, svc, c.log)
	if err := auth.EnsureLeaseMount(ctx, u.Mounts); err != nil {
		return nil, err
	}
	lc := o.Config.Lease
	if u.Leases, err = lease.New(lease.Config{Store: o.Store, Sealer: o.Barrier, Engines: u.Mounts, Logger: c.log,
		MintTimeout: time.Duration(lc.MintTimeout), MaxAttempts: lc.MaxAttempts, BackoffBase: time.Duration(lc.BackoffBase),
		BackoffMax: time.Duration(lc.BackoffMax), PollInterval: time.Duration(lc.PollInterval)}); err != nil {
		return nil, err
	}
	if w := o.Wiring.ACME; w != nil && !o.Config.ACME.Disabled {
		if u.ACME, err = w(u); err != nil {
			return nil, fmt.Errorf("ACME: %w", err)
		}
	}
	if u.AuthMethods, err = newAuthMethods(o.Store, o.Barrier, o.Config.FailedLogins, c.log); err != nil {
		return nil, err
	}
	u.wraps = newWrapPruner(o.Store, u.Tokens, c.log)
	if o.Store.Backend() == "sqlite" {
		// The data directory lock makes this node the only one: claims left
		// by a crashed run would otherwise hold their leases back for the
		// claim timeout.
		if n, err := o.Store.Leases().ReleaseClaims(ctx); err != nil {
			c.log.Warn("release stale lease claims", "err", err)
		} else if n > 0 {
			c.log.Info("released stale lease claims from a previous run", "leases", n)
		}
	}
	u.startBackground()
	return u, nil
}

// deactivate stops u's background work, closes its components and seals
// the barrier. u may be partly built.
func (c *Core) deactivate(u *Unsealed) {
	if u.stop != nil {
		u.stop()
	}
	if u.ACME != nil {
		if err := u.ACME.Close(); err != nil {
			c.log.Warn("close ACME server", "err", err)
		}
	}
	if u.AuthMethods != nil {
		if err := u.AuthMethods.Close(); err != nil {
			c.log.Warn("close auth methods", "err", err)
		}
	}
	if u.Mounts != nil {
		if err := u.Mounts.Close(); err != nil {
			c.log.Warn("close engines", "err", err)
		}
	}
	if u.Audit != nil {
		// A signed checkpoint at the end of every run anchors the chain.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := u.Audit.Checkpoint(cctx); err != nil {
			c.log.Warn("audit checkpoint", "err", err)
		}
		cancel()
		if err := u.Audit.Close(); err != nil {
			c.log.Warn("close audit log", "err", err)
		}
	}
	if u.closeCustody && u.Custody != nil {
		if err := u.Custody.Close(); err != nil {
			c.log.Warn("close custody", "err", err)
		}
	}
	c.opts.Barrier.Lock()
}

// settingAuditKey names the sealed HMAC key of the audit log.
const settingAuditKey = "audit.hmac_key"

// AuditCheckpointKey is the custody key that signs audit checkpoints.
const AuditCheckpointKey = "audit-checkpoint"

// AuditCheckpointEvery signs every Nth record, so a rewritten chain is
// caught even without the database head.
const AuditCheckpointEvery = 1000

// openAudit builds the audit logger: always the database, plus a file when
// configured; checkpoints are signed by a key in custody.
func (c *Core) openAudit(ctx context.Context, custody hsm.Custody) (*audit.Logger, *audit.FileSink, error) {
	key, err := c.auditKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer clear(key)
	if _, err := custody.Key(ctx, AuditCheckpointKey); errors.Is(err, hsm.ErrKeyNotFound) {
		if _, err := custody.CreateKey(ctx, AuditCheckpointKey, hsm.ECDSAP256); err != nil && !errors.Is(err, hsm.ErrKeyExists) {
			return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
		}
	} else if err != nil {
		return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	signer, err := custody.Signer(ctx, AuditCheckpointKey)
	if err != nil {
		return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	ac := c.opts.Config.Audit
	sinks := []audit.Sink{audit.NewDBSink(c.opts.Store)}
	var file *audit.FileSink
	if ac.File != "" {
		if file, err = audit.OpenFile(ac.File, audit.FileOptions{}); err != nil {
			return nil, nil, fmt.Errorf("audit.file: %w", err)
		}
		sinks = append(sinks, file)
	}
	if ac.Stdout {
		sinks = append(sinks, audit.NewStreamSink("stdout", os.Stdout))
	}
	if ac.Syslog {
		w, err := syslog.New(syslog.LOG_AUTH|syslog.LOG_INFO, "sigil")
		if err != nil {
			return nil, nil, fmt.Errorf("audit.syslog: %w", err)
		}
		sinks = append(sinks, audit.NewStreamSink("syslog", w))
	}
	l, err := audit.New(audit.Options{HMACKey: key, Signer: signer, CheckpointEvery: AuditCheckpointEvery}, sinks...)
	if err != nil {
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	return l, file, nil
}

// auditKey returns the audit HMAC key, creating and sealing it on first use.
func (c *Core) auditKey(ctx context.Context) ([]byte, error) {
	settings, b := c.opts.Store.Settings(), c.opts.Barrier
	sealed, err := settings.Get(ctx, settingAuditKey)
	if errors.Is(err, storage.ErrNotFound) {
		key := make([]byte, 32)
		defer clear(key)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if sealed, err = b.Seal(ctx, auth.SettingKind, settingAuditKey, key); err != nil {
			return nil, err
		}
		err = settings.PutIfAbsent(ctx, settingAuditKey, sealed)
		if errors.Is(err, storage.ErrConflict) {
			sealed, err = settings.Get(ctx, settingAuditKey)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	return b.Open(ctx, auth.SettingKind, settingAuditKey, sealed)
}
