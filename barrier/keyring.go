package barrier

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// dek is one data-encryption key of the keyring.
type dek struct {
	version uint32
	created time.Time
	key     []byte
}

// keyring is the decrypted keyring. Every keyring owns its key bytes (no
// sharing between keyrings) so wiping one never damages another.
type keyring struct {
	active uint32
	keys   []dek
}

func newKeyring(now time.Time) (*keyring, error) {
	key, err := randomKey()
	if err != nil {
		return nil, err
	}
	return &keyring{active: 1, keys: []dek{{version: 1, created: now, key: key}}}, nil
}

// withNewKey returns a deep copy of r with one more key, made active.
func (r *keyring) withNewKey(now time.Time) (*keyring, error) {
	if len(r.keys) >= maxKeys {
		return nil, fmt.Errorf("keyring holds the maximum of %d keys", maxKeys)
	}
	key, err := randomKey()
	if err != nil {
		return nil, err
	}
	next := &keyring{keys: make([]dek, 0, len(r.keys)+1)}
	var top uint32
	for _, k := range r.keys {
		next.keys = append(next.keys, dek{version: k.version, created: k.created, key: append([]byte(nil), k.key...)})
		top = max(top, k.version)
	}
	next.active = top + 1
	next.keys = append(next.keys, dek{version: next.active, created: now, key: key})
	return next, nil
}

func (r *keyring) wipe() {
	for i := range r.keys {
		zero(r.keys[i].key)
	}
}

func randomKey() ([]byte, error) {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate data key: %w", err)
	}
	return key, nil
}

// marshal encodes the keyring as
// "SGKR" ‖ active u32 ‖ count u32 ‖ count × (version u32 ‖ created unix-ns i64 ‖ key[32]).
// A fixed binary layout (rather than JSON) means every copy of key material
// is a buffer we own and can zero.
func (r *keyring) marshal() []byte {
	out := make([]byte, 0, len(keyringMagic)+8+len(r.keys)*(4+8+keySize))
	out = append(out, keyringMagic...)
	out = binary.BigEndian.AppendUint32(out, r.active)
	out = binary.BigEndian.AppendUint32(out, uint32(len(r.keys)))
	for _, k := range r.keys {
		out = binary.BigEndian.AppendUint32(out, k.version)
		out = binary.BigEndian.AppendUint64(out, uint64(k.created.UnixNano()))
		out = append(out, k.key...)
	}
	return out
}

var errBadKeyring = errors.New("stored keyring is malformed")

func unmarshalKeyring(b []byte) (*keyring, error) {
	const entry = 4 + 8 + keySize
	if len(b) < len(keyringMagic)+8 || string(b[:len(keyringMagic)]) != keyringMagic {
		return nil, errBadKeyring
	}
	b = b[len(keyringMagic):]
	r := &keyring{active: binary.BigEndian.Uint32(b[0:4])}
	n := binary.BigEndian.Uint32(b[4:8])
	b = b[8:]
	if n == 0 || n > maxKeys || len(b) != int(n)*entry {
		return nil, errBadKeyring
	}
	seen := make(map[uint32]bool, n)
	for i := uint32(0); i < n; i++ {
		e := b[int(i)*entry : int(i+1)*entry]
		k := dek{
			version: binary.BigEndian.Uint32(e[0:4]),
			created: time.Unix(0, int64(binary.BigEndian.Uint64(e[4:12]))).UTC(),
			key:     append([]byte(nil), e[12:]...),
		}
		if k.version == 0 || seen[k.version] {
			r.wipe()
			return nil, errBadKeyring
		}
		seen[k.version] = true
		r.keys = append(r.keys, k)
	}
	if !seen[r.active] {
		r.wipe()
		return nil, errBadKeyring
	}
	return r, nil
}

// sealKeyring encrypts the keyring: format ‖ nonce[12] ‖ GCM(master).
func sealKeyring(master []byte, r *keyring) ([]byte, error) {
	pt := r.marshal()
	defer zero(pt)
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(pt)+tagSize)
	out[0] = keyringFormatV1
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("keyring nonce: %w", err)
	}
	aad := append(append([]byte(nil), keyringAAD...), keyringFormatV1)
	return mustGCM(master).Seal(out, out[1:], pt, aad), nil
}

// openKeyring decrypts a stored keyring. A GCM failure means the master key
// is wrong (or the blob was tampered with, which we cannot tell apart).
func openKeyring(master, sealed []byte) (*keyring, error) {
	if len(sealed) < 1+nonceSize+tagSize || sealed[0] != keyringFormatV1 {
		return nil, fmt.Errorf("%w (%d bytes)", errBadKeyring, len(sealed))
	}
	aad := append(append([]byte(nil), keyringAAD...), keyringFormatV1)
	pt, err := mustGCM(master).Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], aad)
	if err != nil {
		return nil, ErrBadMasterKey
	}
	defer zero(pt)
	return unmarshalKeyring(pt)
}
