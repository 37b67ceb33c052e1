package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// devUnsealFile holds the dev server's master key. Only dev mode has one:
// production servers unseal with operator shares or an HSM.
const devUnsealFile = "dev-unseal.key"

// dbFile is the embedded database inside the data directory.
const dbFile = "sigil.db"

// backends are the opened bottom layers and the roles built on them.
type backends struct {
	store       storage.Store
	barrier     *barrier.Barrier
	custody     hsm.Custody
	custodyKind string
	ca          *ca.Authority
	tokens      *auth.Tokens
	closers     []func() error
}

func (b *backends) close() error {
	var errs []error
	for i := len(b.closers) - 1; i >= 0; i-- {
		if err := b.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// openBackends opens storage, unseals the barrier, opens custody and loads
// the CA. It returns the partially opened backends on error so the caller
// can close them.
func openBackends(ctx context.Context, cfg config.Config, log *slog.Logger) (*backends, error) {
	b := &backends{}
	dbPath := filepath.Join(cfg.DataDir, dbFile)
	_, statErr := os.Stat(dbPath)
	freshDir := errors.Is(statErr, os.ErrNotExist)

	var err error
	switch cfg.StorageBackend() {
	case "sqlite":
		b.store, err = sqlite.Open(ctx, dbPath, log)
	default:
		b.store, err = postgres.Open(ctx, cfg.Storage, log)
		freshDir = false // the database decides, below
	}
	if err != nil {
		return b, fmt.Errorf("open storage: %w", err)
	}
	b.closers = append(b.closers, b.store.Close)

	if !cfg.Dev {
		return b, errors.New("production mode needs operator unsealing, which this build does not have yet: start with --dev")
	}
	master, err := devMasterKey(ctx, cfg.DataDir, b.store, freshDir)
	if err != nil {
		return b, err
	}
	b.barrier = barrier.New(keyringAdapter{b.store.Keyring()})
	if err := b.barrier.Unseal(ctx, master); err != nil {
		return b, fmt.Errorf("unseal: %w", err)
	}
	clear(master)

	if cfg.HSM.URI != "" {
		p, err := hsm.OpenPKCS11(ctx, cfg.HSM.URI, log)
		if err != nil {
			return b, err
		}
		b.custody, b.custodyKind = p, "pkcs11"
	} else {
		b.custody, b.custodyKind = hsm.NewSoft(blobAdapter{b.store.KeyBlobs()}, b.barrier, log), "software"
	}
	b.closers = append(b.closers, b.custody.Close)

	caCfg := ca.Config{PublicURL: cfg.PublicURL, TrustDomain: cfg.CA.TrustDomain}
	if cfg.CA.CFSSLProfiles != "" {
		data, err := os.ReadFile(cfg.CA.CFSSLProfiles)
		if err != nil {
			return b, fmt.Errorf("ca.cfssl_profiles: %w", err)
		}
		if caCfg.Profiles, err = ca.ProfilesFromCFSSL(data); err != nil {
			return b, fmt.Errorf("ca.cfssl_profiles %s: %w", cfg.CA.CFSSLProfiles, err)
		}
	}
	if b.ca, err = ca.New(ctx, b.custody, b.store, caCfg, log); err != nil {
		return b, fmt.Errorf("open CA: %w", err)
	}
	b.tokens = auth.NewTokens(b.store, b.barrier)
	return b, nil
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
