package hsm

import (
	"context"
	"fmt"
)

// TokenAEAD is AES-256-GCM with a key generated in, and never leaving, the
// PKCS#11 token: for data that must be encrypted by the HSM itself
// (transit's managed keys). The key is sensitive and non-extractable, and
// may only encrypt and decrypt.
type TokenAEAD struct {
	p    *PKCS11
	name string
}

// AEADNonceSize and AEADOverhead are TokenAEAD's nonce and tag sizes.
const (
	AEADNonceSize = wrapIVSize
	AEADOverhead  = wrapTagBits / 8
)

// SymmetricKey returns the token AES-256 key named name, generating it in
// the token first if create is set (ErrKeyNotFound otherwise). Names share
// the namespace of KeyWrapper's keys; callers prefix theirs.
func (p *PKCS11) SymmetricKey(ctx context.Context, name string, create bool) (*TokenAEAD, error) {
	if err := ValidateName(name); err != nil {
		return nil, p.wrap("symmetric key", err, nil)
	}
	if err := p.usable(); err != nil {
		return nil, p.wrap("symmetric key "+name, err, nil)
	}
	p.create.Lock()
	defer p.create.Unlock()
	if _, err := p.raw.wrapKey(name, create); err != nil {
		return nil, p.wrap("symmetric key "+name, err, nil)
	}
	return &TokenAEAD{p: p, name: name}, nil
}

// Seal encrypts pt with the 12-byte nonce and associated data in the token
// and returns ciphertext‖tag.
func (a *TokenAEAD) Seal(nonce, pt, aad []byte) ([]byte, error) {
	if len(nonce) != AEADNonceSize {
		return nil, fmt.Errorf("hsm: nonce is %d bytes, want %d", len(nonce), AEADNonceSize)
	}
	out, err := a.p.raw.gcmAAD(a.name, true, nonce, pt, aad)
	if err != nil {
		return nil, a.p.wrap("encrypt with "+a.name, err, nil)
	}
	return out, nil
}

// Open decrypts ciphertext‖tag; a wrong tag, key or associated data fails
// with ErrBadWrappedKey.
func (a *TokenAEAD) Open(nonce, ct, aad []byte) ([]byte, error) {
	if len(nonce) != AEADNonceSize {
		return nil, fmt.Errorf("hsm: nonce is %d bytes, want %d", len(nonce), AEADNonceSize)
	}
	out, err := a.p.raw.gcmAAD(a.name, false, nonce, ct, aad)
	if err != nil {
		return nil, a.p.wrap("decrypt with "+a.name, err, nil)
	}
	return out, nil
}
