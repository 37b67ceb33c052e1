// Package barrier is Sigil's encryption barrier: everything secret that Sigil
// persists (sealed software keys, engine configuration, ...) is encrypted by
// the barrier before it reaches storage, and decrypted by it on the way back.
//
// # Keys
//
// The barrier holds a versioned keyring of 256-bit data-encryption keys
// (AES-256-GCM). The keyring itself is encrypted with a 32-byte master key
// (AES-256-GCM) and persisted through a KeyringStore; the master key is never
// stored by the barrier (package seal reassembles it from operator shares).
// Rotate adds a key version: new values are sealed with it, values sealed
// with older versions still open, and Rewrap moves them forward.
//
// # Ciphertext format
//
//	byte 0      format (0x01)
//	bytes 1-4   key version, big-endian uint32
//	bytes 5-16  nonce (12 random bytes from crypto/rand)
//	bytes 17-   AES-256-GCM ciphertext and 16-byte tag
//
// The GCM associated data binds the value to its header (format and key
// version) and to the record it belongs to, (kind, id), length-prefixed so no
// two different pairs produce the same bytes. A ciphertext copied into another
// record, or a tampered header, fails to open with ErrIntegrity rather than
// decrypting to something plausible.
//
// # Sealed state
//
// A new Barrier is sealed: every operation fails with ErrSealed until Unseal
// is given the master key. Lock zeroises the keyring and the master key and
// returns the barrier to the sealed state.
package barrier

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Errors callers branch on. Every error the barrier returns wraps one of
// these (or a store error) with context.
var (
	// ErrSealed: the barrier has no keys in memory; Unseal it first.
	ErrSealed = errors.New("barrier is sealed")
	// ErrBadMasterKey: the master key does not decrypt the stored keyring.
	ErrBadMasterKey = errors.New("master key does not open the keyring")
	// ErrIntegrity: a ciphertext is malformed, was tampered with, or belongs
	// to another record.
	ErrIntegrity = errors.New("ciphertext failed integrity check")
	// ErrNotFound is what a KeyringStore returns (wrapped or not) from Load
	// when no keyring has been stored yet.
	ErrNotFound = errors.New("keyring not found")
	// ErrConflict is what a KeyringStore returns (wrapped or not) from Save
	// when the stored version is not prevVersion.
	ErrConflict = errors.New("keyring version conflict")
)

// KeyringStore persists the sealed keyring as one opaque, versioned blob.
// storage.Keyring satisfies it through a thin adapter that maps
// storage.ErrNotFound to ErrNotFound and storage.ErrConflict to ErrConflict.
type KeyringStore interface {
	// Load returns the sealed keyring and its version; ErrNotFound if none.
	Load(ctx context.Context) (sealed []byte, version int64, err error)
	// Save stores sealed if the stored version equals prevVersion (0: none
	// stored yet) and returns the new version; ErrConflict otherwise.
	Save(ctx context.Context, sealed []byte, prevVersion int64) (int64, error)
}

const (
	// MasterKeySize is the length of the master key, in bytes.
	MasterKeySize = 32
	keySize       = 32
	nonceSize     = 12
	tagSize       = 16

	formatV1  byte = 0x01
	headerLen      = 1 + 4 + nonceSize
	// Overhead is how many bytes Seal adds to a plaintext.
	Overhead = headerLen + tagSize

	keyringFormatV1 byte = 0x01
	keyringMagic         = "SGKR"
	// maxKeys bounds the keyring so a corrupt (but authentic) count cannot
	// make us allocate without limit; one rotation a day for a century fits.
	maxKeys = 1 << 16
	// saveRetries bounds how often Unseal/Rotate retry after losing a race
	// with another node writing the keyring. Each loss means a peer's write
	// succeeded, so a loser can lose as often as peers write; the jittered
	// backoff between attempts (retryWait) breaks lock-step, and the bound
	// only stops a store that reports conflicts forever.
	saveRetries = 32
)

// keyringAAD separates keyring ciphertexts from value ciphertexts: a value
// can never be passed off as a keyring or the reverse.
const keyringAAD = "sigil/barrier/keyring/v1"

// Barrier encrypts and decrypts values with the keyring. It is safe for
// concurrent use.
type Barrier struct {
	store KeyringStore
	now   func() time.Time

	mu        sync.RWMutex
	master    []byte // nil while sealed
	ring      *keyring
	ringVer   int64 // store version of the keyring we hold
	aeads     map[uint32]cipher.AEAD
	activeVer uint32

	rewrap rewrapRegistry
}

// New returns a sealed barrier that persists its keyring in store.
func New(store KeyringStore) *Barrier {
	return &Barrier{store: store, now: time.Now}
}

// Sealed reports whether the barrier is sealed.
func (b *Barrier) Sealed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.master == nil
}

// Unseal opens the stored keyring with masterKey, or creates the keyring on
// first use. A master key that does not open the stored keyring fails with
// ErrBadMasterKey and leaves the barrier sealed. Unsealing an unsealed
// barrier with the same key is a no-op; with a different key it fails with
// ErrBadMasterKey.
func (b *Barrier) Unseal(ctx context.Context, masterKey []byte) error {
	if len(masterKey) != MasterKeySize {
		return fmt.Errorf("barrier: unseal: master key is %d bytes, want %d: %w", len(masterKey), MasterKeySize, ErrBadMasterKey)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.master != nil {
		if !constantTimeEqual(b.master, masterKey) {
			return fmt.Errorf("barrier: unseal: already unsealed with another key: %w", ErrBadMasterKey)
		}
		return nil
	}
	master := append([]byte(nil), masterKey...)
	for range saveRetries {
		sealed, ver, err := b.store.Load(ctx)
		switch {
		case err == nil:
			ring, err := openKeyring(master, sealed)
			if err != nil {
				zero(master)
				return fmt.Errorf("barrier: unseal: %w", err)
			}
			b.install(master, ring, ver)
			return nil
		case errors.Is(err, ErrNotFound):
			ring, err := newKeyring(b.now())
			if err != nil {
				zero(master)
				return fmt.Errorf("barrier: unseal: %w", err)
			}
			newVer, err := b.saveRing(ctx, master, ring, 0)
			if errors.Is(err, ErrConflict) {
				// Another node created the keyring first: use theirs.
				ring.wipe()
				continue
			}
			if err != nil {
				ring.wipe()
				zero(master)
				return fmt.Errorf("barrier: unseal: create keyring: %w", err)
			}
			b.install(master, ring, newVer)
			return nil
		default:
			zero(master)
			return fmt.Errorf("barrier: unseal: load keyring: %w", err)
		}
	}
	zero(master)
	return fmt.Errorf("barrier: unseal: keyring kept changing under us: %w", ErrConflict)
}

// Lock seals the barrier: it zeroises the master key and every data key held
// in memory. Values can no longer be sealed or opened until Unseal.
func (b *Barrier) Lock() {
	b.mu.Lock()
	defer b.mu.Unlock()
	zero(b.master)
	b.master = nil
	if b.ring != nil {
		b.ring.wipe()
	}
	b.ring = nil
	// The AEADs hold expanded key schedules we cannot reach to zero; dropping
	// them is the best the standard library allows.
	b.aeads = nil
	b.activeVer = 0
	b.ringVer = 0
}

// KeyVersion returns the active key version (0 while sealed).
func (b *Barrier) KeyVersion() uint32 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.activeVer
}

// Seal encrypts plaintext for the record (kind, id) with the active key.
func (b *Barrier) Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.master == nil {
		return nil, fmt.Errorf("barrier: seal %s/%s: %w", kind, id, ErrSealed)
	}
	b.noteSealed(kind)
	return b.sealLocked(kind, id, plaintext)
}

func (b *Barrier) sealLocked(kind, id string, plaintext []byte) ([]byte, error) {
	aead := b.aeads[b.activeVer]
	out := make([]byte, headerLen, headerLen+len(plaintext)+tagSize)
	out[0] = formatV1
	binary.BigEndian.PutUint32(out[1:5], b.activeVer)
	if _, err := rand.Read(out[5:headerLen]); err != nil {
		return nil, fmt.Errorf("barrier: seal %s/%s: nonce: %w", kind, id, err)
	}
	return aead.Seal(out, out[5:headerLen], plaintext, valueAAD(out[:5], kind, id)), nil
}

// Open decrypts a value sealed for the record (kind, id). Malformed,
// tampered or misplaced ciphertexts fail with ErrIntegrity. A key version
// this node does not know yet (another node rotated) makes it reload the
// keyring once before giving up.
func (b *Barrier) Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error) {
	ver, err := parseHeader(sealed)
	if err != nil {
		return nil, fmt.Errorf("barrier: open %s/%s: %w", kind, id, err)
	}
	b.mu.RLock()
	if b.master == nil {
		b.mu.RUnlock()
		return nil, fmt.Errorf("barrier: open %s/%s: %w", kind, id, ErrSealed)
	}
	aead, ok := b.aeads[ver]
	b.mu.RUnlock()
	if !ok {
		if err := b.reload(ctx); err != nil {
			return nil, fmt.Errorf("barrier: open %s/%s: %w", kind, id, err)
		}
		b.mu.RLock()
		aead, ok = b.aeads[ver]
		b.mu.RUnlock()
		if !ok {
			return nil, fmt.Errorf("barrier: open %s/%s: key version %d unknown: %w", kind, id, ver, ErrIntegrity)
		}
	}
	pt, err := aead.Open(nil, sealed[5:headerLen], sealed[headerLen:], valueAAD(sealed[:5], kind, id))
	if err != nil {
		return nil, fmt.Errorf("barrier: open %s/%s: %w", kind, id, ErrIntegrity)
	}
	return pt, nil
}

// NeedsRewrap reports whether sealed was encrypted with a key version older
// than the active one. It reports false while sealed and for malformed input
// (Rewrap would fail on it anyway).
func (b *Barrier) NeedsRewrap(sealed []byte) bool {
	ver, err := parseHeader(sealed)
	if err != nil {
		return false
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.master != nil && ver != b.activeVer
}

// Rewrap re-encrypts a value for (kind, id) under the active key version.
// The plaintext exists only transiently and is zeroised.
func (b *Barrier) Rewrap(ctx context.Context, kind, id string, sealed []byte) ([]byte, error) {
	pt, err := b.Open(ctx, kind, id, sealed)
	if err != nil {
		return nil, err
	}
	defer zero(pt)
	return b.Seal(ctx, kind, id, pt)
}

// Rotate adds a new data-encryption key and makes it active. Existing values
// still open; Rewrap moves them to the new key. It returns the new version.
func (b *Barrier) Rotate(ctx context.Context) (uint32, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.master == nil {
		return 0, fmt.Errorf("barrier: rotate: %w", ErrSealed)
	}
	for attempt := range saveRetries {
		next, err := b.ring.withNewKey(b.now())
		if err != nil {
			return 0, fmt.Errorf("barrier: rotate: %w", err)
		}
		newVer, err := b.saveRing(ctx, b.master, next, b.ringVer)
		if errors.Is(err, ErrConflict) {
			// Another node changed the keyring (rotated too): pick up its
			// keys, then add ours on top so no version is ever lost.
			next.wipe()
			if err := retryWait(ctx, attempt); err != nil {
				return 0, fmt.Errorf("barrier: rotate: %w", err)
			}
			if err := b.reloadLocked(ctx); err != nil {
				return 0, fmt.Errorf("barrier: rotate: %w", err)
			}
			continue
		}
		if err != nil {
			next.wipe()
			return 0, fmt.Errorf("barrier: rotate: save keyring: %w", err)
		}
		b.install(b.master, next, newVer)
		return b.activeVer, nil
	}
	return 0, fmt.Errorf("barrier: rotate: keyring kept changing under us: %w", ErrConflict)
}

// retryWait sleeps before retry number attempt+1 after a lost keyring race:
// a random wait up to 1ms<<attempt (capped at 50ms), so two nodes that
// collided do not collide again in lock-step.
func retryWait(ctx context.Context, attempt int) error {
	ceiling := min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond)
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	d := time.Duration(binary.LittleEndian.Uint64(b[:]) % uint64(ceiling))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// reload re-reads the keyring from the store (after another node rotated).
func (b *Barrier) reload(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.master == nil {
		return ErrSealed
	}
	return b.reloadLocked(ctx)
}

func (b *Barrier) reloadLocked(ctx context.Context) error {
	sealed, ver, err := b.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("reload keyring: %w", err)
	}
	if ver == b.ringVer {
		return nil
	}
	ring, err := openKeyring(b.master, sealed)
	if err != nil {
		return fmt.Errorf("reload keyring: %w", err)
	}
	b.install(b.master, ring, ver)
	return nil
}

// install makes ring (stored at version ver) current. Caller holds mu.
func (b *Barrier) install(master []byte, ring *keyring, ver int64) {
	if b.ring != nil && b.ring != ring {
		b.ring.wipe()
	}
	aeads := make(map[uint32]cipher.AEAD, len(ring.keys))
	for _, k := range ring.keys {
		aeads[k.version] = mustGCM(k.key)
	}
	b.master = master
	b.ring = ring
	b.ringVer = ver
	b.aeads = aeads
	b.activeVer = ring.active
}

func (b *Barrier) saveRing(ctx context.Context, master []byte, ring *keyring, prev int64) (int64, error) {
	sealed, err := sealKeyring(master, ring)
	if err != nil {
		return 0, err
	}
	return b.store.Save(ctx, sealed, prev)
}

func parseHeader(sealed []byte) (uint32, error) {
	if len(sealed) < Overhead {
		return 0, fmt.Errorf("ciphertext is %d bytes, shorter than the %d-byte minimum: %w", len(sealed), Overhead, ErrIntegrity)
	}
	if sealed[0] != formatV1 {
		return 0, fmt.Errorf("unknown ciphertext format 0x%02x: %w", sealed[0], ErrIntegrity)
	}
	ver := binary.BigEndian.Uint32(sealed[1:5])
	if ver == 0 {
		return 0, fmt.Errorf("key version 0 is never issued: %w", ErrIntegrity)
	}
	return ver, nil
}

// valueAAD is header ‖ len(kind) ‖ kind ‖ len(id) ‖ id, lengths as uint32.
// Length prefixes make ("a", "bc") and ("ab", "c") distinct.
func valueAAD(header []byte, kind, id string) []byte {
	aad := make([]byte, 0, len(header)+8+len(kind)+len(id))
	aad = append(aad, header...)
	aad = binary.BigEndian.AppendUint32(aad, uint32(len(kind)))
	aad = append(aad, kind...)
	aad = binary.BigEndian.AppendUint32(aad, uint32(len(id)))
	aad = append(aad, id...)
	return aad
}

func mustGCM(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		// Only a wrong key length fails, and keys are always 32 bytes here.
		panic(fmt.Sprintf("barrier: aes: %v", err))
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(fmt.Sprintf("barrier: gcm: %v", err))
	}
	return aead
}

func zero(b []byte) {
	clear(b)
}

// constantTimeEqual compares secrets without leaking where they differ.
func constantTimeEqual(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
