package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"log/syslog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/keys"
	pgengine "github.com/sigil-ca/sigil/engines/postgres"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// devUnsealFile holds the dev server's master key. Only dev mode has one:
// production servers unseal with operator shares or an HSM.
const devUnsealFile = "dev-unseal.key"

// dbFile is the embedded database inside the data directory.
const dbFile = "sigil.db"

// openStorage opens the configured backend. fresh reports a data directory
// that has never held an embedded database.
func openStorage(ctx context.Context, cfg config.Config, log *slog.Logger) (store storage.Store, fresh bool, err error) {
	if cfg.StorageBackend() == "sqlite" {
		dbPath := filepath.Join(cfg.DataDir, dbFile)
		_, statErr := os.Stat(dbPath)
		fresh = errors.Is(statErr, os.ErrNotExist)
		store, err = sqlite.Open(ctx, dbPath, log)
	} else {
		store, err = postgres.Open(ctx, cfg.Storage, log)
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s storage: %w", cfg.StorageBackend(), err)
	}
	return store, fresh, nil
}

// active holds what exists only while the server is unsealed.
type active struct {
	custody  hsm.Custody
	ca       *ca.Authority
	tokens   *auth.Tokens
	policies *policy.Manager
	audit    *audit.Logger
	// auditFile is the file sink, if configured, reopened on SIGHUP.
	auditFile *audit.FileSink
	mounts    *engines.Mounts
	leases    *lease.Manager
	acme      *acme.Server
	// closeCustody is set when custody is owned by this activation (the
	// software keystore); an HSM session outlives sealing.
	closeCustody bool
	// stopBackground ends the CA's background work (CRL refresh, pruning)
	// and waits for it.
	stopBackground func()
}

// startBackground runs the roles' background work until deactivation. It
// is not tied to the request that unsealed the server.
func (a *active) startBackground(log interface{ Warn(string, ...any) }) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.ca.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("CA background work stopped", "err", err)
		}
	}()
	// The expiry worker claims due leases from storage in batches, so it
	// never holds every lease in memory and a restart is ready at once.
	a.leases.Start(ctx)
	var wg sync.WaitGroup
	if a.acme != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Hour)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if _, err := a.acme.Prune(ctx, 24*time.Hour); err != nil && ctx.Err() == nil {
					log.Warn("ACME prune failed", "err", err)
				}
			}
		}()
	}
	a.stopBackground = func() {
		cancel()
		a.leases.Stop()
		<-done
		wg.Wait()
	}
}

// activate unseals the barrier with master and builds custody, the CA and
// the token service on it.
func (s *Server) activate(ctx context.Context, master []byte) (*active, error) {
	if err := s.barrier.Unseal(ctx, master); err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	a := &active{}
	if s.hsm != nil {
		a.custody = s.hsm
	} else {
		a.custody, a.closeCustody = hsm.NewSoft(adapt.Blobs(s.store.KeyBlobs()), s.barrier, s.log), true
	}
	caCfg := ca.Config{PublicURL: s.cfg.PublicURL, TrustDomain: s.cfg.CA.TrustDomain,
		IssuanceRefused: func(reason string) { s.metrics.issuanceRefused.WithLabelValues(reason).Inc() }}
	if s.cfg.CA.CFSSLProfiles != "" {
		data, err := os.ReadFile(s.cfg.CA.CFSSLProfiles)
		if err != nil {
			s.deactivate(a)
			return nil, fmt.Errorf("ca.cfssl_profiles: %w", err)
		}
		if caCfg.Profiles, err = ca.ProfilesFromCFSSL(data); err != nil {
			s.deactivate(a)
			return nil, fmt.Errorf("ca.cfssl_profiles %s: %w", s.cfg.CA.CFSSLProfiles, err)
		}
	}
	var err error
	if a.ca, err = ca.New(a.custody, s.store, caCfg, s.log); err != nil {
		s.deactivate(a)
		return nil, fmt.Errorf("open CA: %w", err)
	}
	if err := a.ca.Load(ctx); err != nil {
		s.deactivate(a)
		return nil, fmt.Errorf("load CA: %w", err)
	}
	a.tokens = auth.NewTokens(s.store, s.barrier)
	a.policies = policy.NewManager(s.store.Policies(), 5*time.Second)
	if a.audit, a.auditFile, err = s.openAudit(ctx, a.custody); err != nil {
		s.deactivate(a)
		return nil, err
	}
	reg := engines.NewRegistry()
	if err := pgengine.Register(reg); err != nil {
		s.deactivate(a)
		return nil, err
	}
	if err := tokens.Register(reg); err != nil {
		s.deactivate(a)
		return nil, err
	}
	if err := transit.Register(reg); err != nil {
		s.deactivate(a)
		return nil, err
	}
	if err := keys.Register(reg); err != nil {
		s.deactivate(a)
		return nil, err
	}
	if err := reg.Register(tokenEngineType, func(engines.Env) (engines.Engine, error) { return tokenEngine{tokens: a.tokens}, nil }); err != nil {
		s.deactivate(a)
		return nil, err
	}
	svc := engines.Services{Custody: a.custody, Certificates: caCertificates{a.ca}}
	if s.p11 != nil {
		svc.Managed = p11Managed{s.p11}
	}
	a.mounts = engines.NewMounts(s.store, s.barrier, reg, svc, s.log)
	if err := ensureTokenMount(ctx, a.mounts); err != nil {
		s.deactivate(a)
		return nil, err
	}
	lc := s.cfg.Lease
	if a.leases, err = lease.New(lease.Config{Store: s.store, Sealer: s.barrier, Engines: a.mounts, Logger: s.log,
		MintTimeout: time.Duration(lc.MintTimeout), MaxAttempts: lc.MaxAttempts, BackoffBase: time.Duration(lc.BackoffBase),
		BackoffMax: time.Duration(lc.BackoffMax), PollInterval: time.Duration(lc.PollInterval)}); err != nil {
		s.deactivate(a)
		return nil, err
	}
	if !s.cfg.ACME.Disabled {
		if a.acme, err = s.openACME(a); err != nil {
			s.deactivate(a)
			return nil, fmt.Errorf("ACME: %w", err)
		}
	}
	if s.store.Backend() == "sqlite" {
		// The data directory lock makes this node the only one: claims left
		// by a crashed run would otherwise hold their leases back for the
		// claim timeout.
		if n, err := s.store.Leases().ReleaseClaims(ctx); err != nil {
			s.log.Warn("release stale lease claims", "err", err)
		} else if n > 0 {
			s.log.Info("released stale lease claims from a previous run", "leases", n)
		}
	}
	a.startBackground(s.log)
	return a, nil
}

// auditCheckpointKey is the custody key that signs audit checkpoints.
const auditCheckpointKey = "audit-checkpoint"

// auditCheckpointEvery signs every Nth record, so a rewritten chain is
// caught even without the database head.
const auditCheckpointEvery = 1000

// openAudit builds the audit logger: always the database, plus a file when
// configured; checkpoints are signed by a key in custody.
func (s *Server) openAudit(ctx context.Context, custody hsm.Custody) (*audit.Logger, *audit.FileSink, error) {
	key, err := s.auditKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer clear(key)
	if _, err := custody.Key(ctx, auditCheckpointKey); errors.Is(err, hsm.ErrKeyNotFound) {
		if _, err := custody.CreateKey(ctx, auditCheckpointKey, hsm.ECDSAP256); err != nil && !errors.Is(err, hsm.ErrKeyExists) {
			return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
		}
	} else if err != nil {
		return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	signer, err := custody.Signer(ctx, auditCheckpointKey)
	if err != nil {
		return nil, nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	sinks := []audit.Sink{audit.NewDBSink(s.store)}
	var file *audit.FileSink
	if s.cfg.Audit.File != "" {
		if file, err = audit.OpenFile(s.cfg.Audit.File, audit.FileOptions{}); err != nil {
			return nil, nil, fmt.Errorf("audit.file: %w", err)
		}
		sinks = append(sinks, file)
	}
	if s.cfg.Audit.Stdout {
		sinks = append(sinks, audit.NewStreamSink("stdout", os.Stdout))
	}
	if s.cfg.Audit.Syslog {
		w, err := syslog.New(syslog.LOG_AUTH|syslog.LOG_INFO, "sigil")
		if err != nil {
			return nil, nil, fmt.Errorf("audit.syslog: %w", err)
		}
		sinks = append(sinks, audit.NewStreamSink("syslog", w))
	}
	l, err := audit.New(audit.Options{HMACKey: key, Signer: signer, CheckpointEvery: auditCheckpointEvery}, sinks...)
	if err != nil {
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	return l, file, nil
}

// ReopenAuditFile reopens the audit file after logrotate moved it (SIGHUP).
func (s *Server) ReopenAuditFile() error {
	a := s.current()
	if a == nil || a.auditFile == nil {
		return nil
	}
	return a.auditFile.Reopen()
}

// deactivate drops an activation and seals the barrier.
func (s *Server) deactivate(a *active) {
	if a != nil && a.stopBackground != nil {
		a.stopBackground()
	}
	if a != nil && a.acme != nil {
		if err := a.acme.Close(); err != nil {
			s.log.Warn("close ACME server", "err", err)
		}
	}
	if a != nil && a.mounts != nil {
		if err := a.mounts.Close(); err != nil {
			s.log.Warn("close engines", "err", err)
		}
	}
	if a != nil && a.audit != nil {
		// A signed checkpoint at the end of every run anchors the chain.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.audit.Checkpoint(cctx); err != nil {
			s.log.Warn("audit checkpoint", "err", err)
		}
		cancel()
		if err := a.audit.Close(); err != nil {
			s.log.Warn("close audit log", "err", err)
		}
	}
	if a != nil && a.closeCustody && a.custody != nil {
		if err := a.custody.Close(); err != nil {
			s.log.Warn("close custody", "err", err)
		}
	}
	s.barrier.Lock()
}

// devMasterKey reads the dev master key, creating it only for a data
// directory that has never held a keyring: a missing key file next to
// existing data is an error, never a reason to start over.
func devMasterKey(ctx context.Context, dir string, store storage.Store, fresh bool) ([]byte, error) {
	path := filepath.Join(dir, devUnsealFile)
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(data)))
		if err != nil || len(key) != 32 {
			return nil, fmt.Errorf("%s: not a 32-byte hex key", path)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !fresh {
		if _, _, err := store.Keyring().Get(ctx); !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("%s is missing but the store already holds sealed data; refusing to create a new key over it", path)
		}
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return key, nil
}
