package engines

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// Services are the server's facilities an engine may use, given to every
// mount through its Env. Any may be nil when the server has none (an engine
// that needs one refuses to configure).
type Services struct {
	// Custody creates and uses keys that never leave it (signing keys for
	// JWTs and SSH certificates).
	Custody Custody
	// Certificates issues and revokes X.509 certificates through the CA.
	Certificates Certificates
	// Managed makes and uses symmetric keys inside the HSM; nil without
	// one.
	Managed ManagedKeys
}

// ManagedKeys makes and uses AES-256-GCM keys that live in the HSM. Names
// are global to the token: callers pick unique ones.
type ManagedKeys interface {
	AEAD(ctx context.Context, name string, create bool) (ManagedAEAD, error)
}

// ManagedAEAD is AES-256-GCM computed in the HSM: 12-byte nonces, 16-byte
// tags, Seal returning ciphertext‖tag.
type ManagedAEAD interface {
	Seal(nonce, plaintext, aad []byte) ([]byte, error)
	Open(nonce, ciphertext, aad []byte) ([]byte, error)
}

// Certificates is what engines need of the CA: issuing a certificate whose
// serial was chosen in advance (so a lease records it before it exists),
// and revoking it.
type Certificates interface {
	// NewSerial returns a fresh serial for CertRequest.Serial.
	NewSerial() string
	Issue(ctx context.Context, req CertRequest) (*IssuedCert, error)
	// Revoke revokes serial; a serial never issued or already revoked is
	// success (revocation must be idempotent).
	Revoke(ctx context.Context, serial string) error
}

// CertRequest asks the CA for a certificate.
type CertRequest struct {
	CSR     []byte // DER
	Profile string // "" for the CA's default
	TTL     time.Duration
	Serial  string
	// LeaseID is the lease the certificate is issued under (required): the
	// inventory records the certificate as the lease's, so an SVID issued
	// this way cannot renew itself past its lease.
	LeaseID string
}

// IssuedCert is an issued certificate.
type IssuedCert struct {
	Serial   string
	NotAfter time.Time
	ChainPEM []byte // the certificate, then its issuers
}

// Custody is the part of key custody engines use. Through Env it is scoped
// to the mount: names are local to it, so two mounts never share a key.
type Custody interface {
	CreateKey(ctx context.Context, name string, typ hsm.KeyType) (hsm.KeyInfo, error)
	Signer(ctx context.Context, name string) (crypto.Signer, error)
	Key(ctx context.Context, name string) (hsm.KeyInfo, error)
}

// MaxCustodyName is the longest key name an engine may pass to its scoped
// Custody (custody names are at most 64 bytes; the scope takes the rest).
const MaxCustodyName = 64 - len("eng.") - 12 - len(".")

// scopedCustody prefixes names with a digest of the mount path, so keys of
// a mount never collide with another mount's or with the CA's own.
type scopedCustody struct {
	c      Custody
	prefix string
}

func newScopedCustody(c Custody, mount string) Custody {
	if c == nil {
		return nil
	}
	sum := sha256.Sum256([]byte(mount))
	return scopedCustody{c: c, prefix: "eng." + hex.EncodeToString(sum[:6]) + "."}
}

func (s scopedCustody) name(n string) (string, error) {
	if n == "" || len(n) > MaxCustodyName {
		return "", fmt.Errorf("%w: engine key name %q (1-%d bytes)", ErrInvalidPath, n, MaxCustodyName)
	}
	return s.prefix + n, nil
}

func (s scopedCustody) CreateKey(ctx context.Context, name string, typ hsm.KeyType) (hsm.KeyInfo, error) {
	full, err := s.name(name)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	ki, err := s.c.CreateKey(ctx, full, typ)
	ki.Name = name
	return ki, err
}

func (s scopedCustody) Signer(ctx context.Context, name string) (crypto.Signer, error) {
	full, err := s.name(name)
	if err != nil {
		return nil, err
	}
	return s.c.Signer(ctx, full)
}

func (s scopedCustody) Key(ctx context.Context, name string) (hsm.KeyInfo, error) {
	full, err := s.name(name)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	ki, err := s.c.Key(ctx, full)
	ki.Name = name
	return ki, err
}

// Store is a mount's private key-value storage. Values are sealed by the
// barrier and bound to the mount and key, so a row copied to another key or
// mount does not open. Errors: storage.ErrNotFound for a missing key,
// storage.ErrConflict when Create finds the key or Replace finds it changed.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Put(ctx context.Context, key string, value []byte) error
	// Create stores value only if key is absent.
	Create(ctx context.Context, key string, value []byte) error
	// Replace stores value only if the stored value still equals old, so
	// two nodes updating one record never lose an update.
	Replace(ctx context.Context, key string, old, value []byte) error
	Delete(ctx context.Context, key string) error
	// List returns the keys under prefix, sorted.
	List(ctx context.Context, prefix string) ([]string, error)
}

// DataSealKind is the barrier record kind of engine data; the id is
// DataSealID(mount, key).
const DataSealKind = "engine-data"

// DataSettingPrefix is where engine data lives in the settings table; the
// full key is DataSettingPrefix + mount + "#" + key ('#' cannot occur in a
// mount path, so one mount's keys never fall under another's prefix).
const DataSettingPrefix = "engine-data/"

// DataSealID is the barrier id of a mount's value stored at setting key
// settingKey (the id is the setting key itself, which names mount and key).
func DataSealID(settingKey string) string { return settingKey }

func dataPrefix(mount string) string { return DataSettingPrefix + mount + "#" }

func checkDataKey(key string) error {
	// NUL is refused: PostgreSQL text cannot hold it.
	if key == "" || len(key) > 256 || strings.ContainsRune(key, 0) {
		return fmt.Errorf("%w: engine data key %q", ErrInvalidPath, key)
	}
	return nil
}

type sealedStore struct {
	settings storage.Settings
	sealer   Sealer
	prefix   string
}

func newSealedStore(s storage.Settings, sealer Sealer, mount string) Store {
	return sealedStore{settings: s, sealer: sealer, prefix: dataPrefix(mount)}
}

func (s sealedStore) key(key string) (string, error) {
	if err := checkDataKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

func (s sealedStore) seal(ctx context.Context, full string, v []byte) ([]byte, error) {
	sealed, err := s.sealer.Seal(ctx, DataSealKind, DataSealID(full), v)
	if err != nil {
		return nil, fmt.Errorf("engines: seal data %q: %w", full[len(s.prefix):], err)
	}
	return sealed, nil
}

// getSealed returns the stored and opened value.
func (s sealedStore) getSealed(ctx context.Context, full string) (sealed, plain []byte, err error) {
	sealed, err = s.settings.Get(ctx, full)
	if err != nil {
		return nil, nil, fmt.Errorf("engines: data %q: %w", full[len(s.prefix):], err)
	}
	plain, err = s.sealer.Open(ctx, DataSealKind, DataSealID(full), sealed)
	if err != nil {
		return nil, nil, fmt.Errorf("engines: open data %q: %w", full[len(s.prefix):], err)
	}
	return sealed, plain, nil
}

func (s sealedStore) Get(ctx context.Context, key string) ([]byte, error) {
	full, err := s.key(key)
	if err != nil {
		return nil, err
	}
	_, plain, err := s.getSealed(ctx, full)
	return plain, err
}

func (s sealedStore) Put(ctx context.Context, key string, value []byte) error {
	full, err := s.key(key)
	if err != nil {
		return err
	}
	sealed, err := s.seal(ctx, full, value)
	if err != nil {
		return err
	}
	return s.settings.Put(ctx, full, sealed)
}

func (s sealedStore) Create(ctx context.Context, key string, value []byte) error {
	full, err := s.key(key)
	if err != nil {
		return err
	}
	sealed, err := s.seal(ctx, full, value)
	if err != nil {
		return err
	}
	if err := s.settings.PutIfAbsent(ctx, full, sealed); err != nil {
		return fmt.Errorf("engines: create data %q: %w", key, err)
	}
	return nil
}

func (s sealedStore) Replace(ctx context.Context, key string, old, value []byte) error {
	full, err := s.key(key)
	if err != nil {
		return err
	}
	sealedOld, plain, err := s.getSealed(ctx, full)
	if err != nil {
		return err
	}
	// Values may be key material: compare without leaking where they differ.
	if !hmac.Equal(plain, old) {
		clear(plain)
		return fmt.Errorf("engines: replace data %q: %w", key, storage.ErrConflict)
	}
	clear(plain)
	sealed, err := s.seal(ctx, full, value)
	if err != nil {
		return err
	}
	if err := s.settings.Replace(ctx, full, sealedOld, sealed); err != nil {
		return fmt.Errorf("engines: replace data %q: %w", key, err)
	}
	return nil
}

func (s sealedStore) Delete(ctx context.Context, key string) error {
	full, err := s.key(key)
	if err != nil {
		return err
	}
	if err := s.settings.Delete(ctx, full); err != nil {
		return fmt.Errorf("engines: delete data %q: %w", key, err)
	}
	return nil
}

func (s sealedStore) List(ctx context.Context, prefix string) ([]string, error) {
	if strings.ContainsRune(prefix, 0) {
		return nil, fmt.Errorf("%w: engine data prefix %q", ErrInvalidPath, prefix)
	}
	keys, err := s.settings.List(ctx, s.prefix+prefix)
	if err != nil {
		return nil, fmt.Errorf("engines: list data %q: %w", prefix, err)
	}
	for i, k := range keys {
		keys[i] = k[len(s.prefix):]
	}
	return keys, nil
}

// deleteData removes every value of mount (on disable).
func deleteData(ctx context.Context, s storage.Settings, mount string) error {
	keys, err := s.List(ctx, dataPrefix(mount))
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.Delete(ctx, k); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	return nil
}
