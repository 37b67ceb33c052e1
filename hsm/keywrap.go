package hsm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// KeyWrapper protects Sigil's 32-byte master key with a key that never
// leaves the HSM ("auto-unseal"): the wrapped form can be stored anywhere,
// and only the token can unwrap it.
type KeyWrapper interface {
	WrapMasterKey(ctx context.Context, key []byte) ([]byte, error)
	UnwrapMasterKey(ctx context.Context, wrapped []byte) ([]byte, error)
}

// ErrBadWrappedKey: a wrapped master key is malformed, tampered with, or was
// wrapped by another token key.
var ErrBadWrappedKey = errors.New("wrapped master key does not open")

const (
	wrapFormatV1  byte = 0x01
	wrapIVSize         = 12
	wrapTagBits        = 128
	wrapLabelPref      = LabelPrefix + "wrap."
)

// wrapAAD binds a wrapped key to its purpose and wrapping key name, so a
// blob wrapped for one purpose is refused for another.
func wrapAAD(name string) []byte {
	return []byte("sigil/hsm/master-key-wrap/v1\x00" + name)
}

// KeyWrapper returns a KeyWrapper using the token's AES-256 key named name
// (label "sigil-wrap.<name>"), generating it in the token on first use:
// sensitive, non-extractable, usable only to encrypt and decrypt.
//
// Wrapping is AES-256-GCM computed in the token (C_Encrypt with
// CKM_AES_GCM), with a random 96-bit IV from crypto/rand: format byte ‖
// IV ‖ ciphertext ‖ tag. GCM rather than CKM_AES_KEY_WRAP_PAD because
// C_WrapKey needs the master key as an extractable token object and
// C_UnwrapKey would then have to make it readable again; encrypting the
// bytes directly never creates such an object, and GCM authenticates.
func (p *PKCS11) KeyWrapper(ctx context.Context, name string) (KeyWrapper, error) {
	if err := ValidateName(name); err != nil {
		return nil, p.wrap("key wrapper", err, nil)
	}
	if err := p.usable(); err != nil {
		return nil, p.wrap("key wrapper "+name, err, nil)
	}
	p.create.Lock()
	defer p.create.Unlock()
	if _, err := p.raw.wrapKey(name, true); err != nil {
		return nil, p.wrap("key wrapper "+name, err, nil)
	}
	return &tokenWrapper{p: p, name: name}, nil
}

type tokenWrapper struct {
	p    *PKCS11
	name string
}

func (w *tokenWrapper) WrapMasterKey(ctx context.Context, key []byte) ([]byte, error) {
	if len(key) != 32 {
		return nil, w.p.wrap("wrap master key", fmt.Errorf("key is %d bytes, want 32", len(key)), nil)
	}
	if err := w.p.usable(); err != nil {
		return nil, w.p.wrap("wrap master key", err, nil)
	}
	iv := make([]byte, wrapIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, w.p.wrap("wrap master key", err, nil)
	}
	ct, err := w.p.raw.gcm(w.name, true, iv, key)
	if err != nil {
		return nil, w.p.wrap("wrap master key", err, nil)
	}
	out := make([]byte, 0, 1+wrapIVSize+len(ct))
	out = append(out, wrapFormatV1)
	out = append(out, iv...)
	return append(out, ct...), nil
}

func (w *tokenWrapper) UnwrapMasterKey(ctx context.Context, wrapped []byte) ([]byte, error) {
	if len(wrapped) != 1+wrapIVSize+32+wrapTagBits/8 || wrapped[0] != wrapFormatV1 {
		return nil, w.p.wrap("unwrap master key", fmt.Errorf("%d bytes, not a wrapped master key", len(wrapped)), ErrBadWrappedKey)
	}
	if err := w.p.usable(); err != nil {
		return nil, w.p.wrap("unwrap master key", err, nil)
	}
	pt, err := w.p.raw.gcm(w.name, false, wrapped[1:1+wrapIVSize], wrapped[1+wrapIVSize:])
	if err != nil {
		return nil, w.p.wrap("unwrap master key", err, nil)
	}
	return pt, nil
}

// wrapKey finds (or, if create, generates) the AES wrapping key.
func (r *rawToken) wrapKey(name string, create bool) (pkcs11.ObjectHandle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wrapKeyLocked(name, create)
}

func (r *rawToken) wrapKeyLocked(name string, create bool) (pkcs11.ObjectHandle, error) {
	label := wrapLabelPref + name
	sum := sha256.Sum256([]byte(label))
	hs, err := r.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	})
	if err != nil {
		return 0, err
	}
	switch {
	case len(hs) == 1:
		return hs[0], nil
	case len(hs) > 1:
		return 0, fmt.Errorf("%d secret keys labelled %q", len(hs), label)
	case !create:
		return 0, fmt.Errorf("wrapping key %q: %w", label, ErrKeyNotFound)
	}
	h, err := r.ctx.GenerateKey(r.session, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, sum[:8]),
	})
	if err != nil {
		return 0, fmt.Errorf("C_GenerateKey(AES-256): %w", err)
	}
	return h, nil
}

// gcm runs AES-256-GCM in the token with the named wrapping key.
func (r *rawToken) gcm(name string, encrypt bool, iv, in []byte) ([]byte, error) {
	return r.gcmAAD(name, encrypt, iv, in, wrapAAD(name))
}

// gcmAAD is gcm with the caller's associated data.
func (r *rawToken) gcmAAD(name string, encrypt bool, iv, in, aad []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, err := r.wrapKeyLocked(name, false)
	if err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(iv, aad, wrapTagBits)
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	if encrypt {
		if err := r.ctx.EncryptInit(r.session, mech, h); err != nil {
			return nil, fmt.Errorf("C_EncryptInit(CKM_AES_GCM): %w", err)
		}
		out, err := r.ctx.Encrypt(r.session, in)
		if err != nil {
			return nil, fmt.Errorf("C_Encrypt: %w", err)
		}
		return out, nil
	}
	if err := r.ctx.DecryptInit(r.session, mech, h); err != nil {
		return nil, fmt.Errorf("C_DecryptInit(CKM_AES_GCM): %w", err)
	}
	out, err := r.ctx.Decrypt(r.session, in)
	if err != nil {
		// A GCM tag mismatch: CKR_ENCRYPTED_DATA_INVALID per the standard;
		// SoftHSM 2.6 answers CKR_GENERAL_ERROR for it.
		if isCode(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID) || isCode(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE) || isCode(err, pkcs11.CKR_GENERAL_ERROR) {
			return nil, fmt.Errorf("C_Decrypt: %w: %w", ErrBadWrappedKey, err)
		}
		return nil, fmt.Errorf("C_Decrypt: %w", err)
	}
	return out, nil
}
