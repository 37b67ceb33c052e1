// Package hsm is Sigil's key custody: it creates private keys, keeps them
// where they cannot be read (a PKCS#11 token, or a sealed software keystore),
// and hands out crypto.Signers that use them in place.
//
// Nothing above custody ever sees private key material. Both implementations
// (the software keystore and PKCS#11) satisfy Custody and pass the same
// conformance suite (hsmtest).
package hsm

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"time"
)

// KeyType names a signing key algorithm and size.
type KeyType string

// Key types custody can create.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
	Ed25519   KeyType = "ed25519"
)

// KeyTypes lists every key type in a stable order.
var KeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096, Ed25519}

// Valid reports whether t is a known key type.
func (t KeyType) Valid() bool { return slices.Contains(KeyTypes, t) }

// KeyInfo describes a key held in custody. It never carries private material.
type KeyInfo struct {
	Name      string
	Type      KeyType
	Public    crypto.PublicKey
	CreatedAt time.Time
}

// Custody creates and uses keys that never leave it.
type Custody interface {
	// CreateKey generates a new key named name inside custody. It fails with
	// ErrKeyExists if the name is taken: a key is never silently replaced.
	CreateKey(ctx context.Context, name string, typ KeyType) (KeyInfo, error)
	// Signer returns a signer backed by the named key; ErrKeyNotFound if absent.
	Signer(ctx context.Context, name string) (crypto.Signer, error)
	// Key describes the named key; ErrKeyNotFound if absent.
	Key(ctx context.Context, name string) (KeyInfo, error)
	// ListKeys lists every key, sorted by name.
	ListKeys(ctx context.Context) ([]KeyInfo, error)
	// Ping reports whether custody answers (used by readiness checks).
	Ping(ctx context.Context) error
	// Close releases sessions and handles.
	Close() error
}

// KeyDestroyer is custody that can destroy a key (both implementations
// here are). It is for keys nothing will sign with again, such as retired
// JWT-SVID keys: it cannot be undone. ErrKeyNotFound if the key is absent.
type KeyDestroyer interface {
	DestroyKey(ctx context.Context, name string) error
}

// Errors callers branch on. Implementations wrap them with context.
var (
	ErrKeyNotFound = errors.New("key not found")
	ErrKeyExists   = errors.New("key already exists")
	ErrBadKeyType  = errors.New("unsupported key type")
	ErrSealed      = errors.New("custody is sealed")
	ErrAuthFailed  = errors.New("authentication failed")
)

// ValidateName checks a key name: 1-64 characters of [A-Za-z0-9._-].
func ValidateName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("key name %q: must be 1-64 characters", name)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return fmt.Errorf("key name %q: character %q not allowed (use A-Z a-z 0-9 . _ -)", name, r)
		}
	}
	return nil
}
