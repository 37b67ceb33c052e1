package hsm

import (
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"

	"github.com/miekg/pkcs11"
)

// PKCS#11 3.0 EdDSA identifiers. miekg/pkcs11 v1.1.2 carries the 2.40
// headers, which predate them; SoftHSM 2.6 implements them.
const (
	ckkECEdwards            = 0x00000040
	ckmECEdwardsKeyPairGen  = 0x00001055
	ckmEdDSA                = 0x00001057
	maxIdleEdDSASessions    = 8
	ed25519CurveOIDEncoding = "\x06\x03\x2b\x65\x70" // DER of 1.3.101.112 (id-Ed25519)
)

// Ed25519 keys go straight through miekg/pkcs11, because crypto11 (and so
// kms/pkcs11) has no EdDSA support.

// generateEd25519 creates an Ed25519 key pair in the token: the private
// half sensitive, non-extractable, sign-only.
func (r *rawToken) generateEd25519(label string, id []byte) (ed25519.PublicKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return nil, errClosed
	}
	pubH, _, err := r.ctx.GenerateKeyPair(r.session,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(ckmECEdwardsKeyPairGen, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte(ed25519CurveOIDEncoding)),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		})
	if err != nil {
		if isCode(err, pkcs11.CKR_MECHANISM_INVALID) {
			return nil, fmt.Errorf("token has no EdDSA: %w: %w", ErrBadKeyType, err)
		}
		return nil, fmt.Errorf("C_GenerateKeyPair(EC_EDWARDS): %w", err)
	}
	return r.edPublicLocked(pubH)
}

// keyType returns the CKA_KEY_TYPE of the private key with this label and
// ID, and its handle; ErrKeyNotFound if there is none.
func (r *rawToken) keyType(label string, id []byte) (uint, pkcs11.ObjectHandle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, err := r.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return 0, 0, err
	}
	switch len(hs) {
	case 0:
		return 0, 0, fmt.Errorf("no private key labelled %q: %w", label, ErrKeyNotFound)
	case 1:
	default:
		return 0, 0, fmt.Errorf("%d private keys labelled %q", len(hs), label)
	}
	attrs, err := r.ctx.GetAttributeValue(r.session, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return 0, 0, fmt.Errorf("C_GetAttributeValue(CKA_KEY_TYPE): %w", err)
	}
	return uint(bytesToUint(attrs[0].Value)), hs[0], nil
}

// edPublic reads the Ed25519 public key with this label and ID.
func (r *rawToken) edPublic(label string, id []byte) (ed25519.PublicKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, err := r.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		return nil, fmt.Errorf("%d public keys labelled %q: %w", len(hs), label, ErrKeyNotFound)
	}
	return r.edPublicLocked(hs[0])
}

func (r *rawToken) edPublicLocked(h pkcs11.ObjectHandle) (ed25519.PublicKey, error) {
	attrs, err := r.ctx.GetAttributeValue(r.session, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", err)
	}
	p := attrs[0].Value
	// PKCS#11 3.0 says CKA_EC_POINT is a DER OCTET STRING; some tokens
	// return the 32 raw bytes.
	if len(p) == 2+ed25519.PublicKeySize && p[0] == 0x04 && p[1] == ed25519.PublicKeySize {
		p = p[2:]
	}
	if len(p) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("CKA_EC_POINT of %d bytes is not an Ed25519 key", len(attrs[0].Value))
	}
	return ed25519.PublicKey(append([]byte(nil), p...)), nil
}

func bytesToUint(b []byte) uint64 {
	// CK_ULONG in host byte order; every platform Go+cgo targets here is
	// little-endian.
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// withSession runs fn on an idle logged-in session, opening one if none is
// idle, so EdDSA signing from many goroutines is not serialised on the
// shared raw session. At most maxIdleEdDSASessions stay open between calls.
func (r *rawToken) withSession(fn func(pkcs11.SessionHandle) error) error {
	r.mu.Lock()
	if !r.open {
		r.mu.Unlock()
		return errClosed
	}
	var sh pkcs11.SessionHandle
	if n := len(r.idle); n > 0 {
		sh, r.idle = r.idle[n-1], r.idle[:n-1]
		r.mu.Unlock()
	} else {
		r.mu.Unlock()
		var err error
		// Opened without r.mu held: C_OpenSession is thread-safe and may be
		// slow on a network HSM. Login state is shared by the application.
		sh, err = r.ctx.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			return fmt.Errorf("C_OpenSession: %w", err)
		}
	}
	err := fn(sh)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open && err == nil && len(r.idle) < maxIdleEdDSASessions {
		r.idle = append(r.idle, sh)
	} else {
		// After an error the session's operation state is unknown: drop it.
		_ = r.ctx.CloseSession(sh)
	}
	return err
}

// edSigner signs with an Ed25519 key in the token (CKM_EDDSA, pure Ed25519).
type edSigner struct {
	p    *PKCS11
	name string
	pub  ed25519.PublicKey
	h    pkcs11.ObjectHandle
}

func (s *edSigner) Public() crypto.PublicKey { return s.pub }

func (s *edSigner) Sign(_ io.Reader, message []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != 0 {
		return nil, s.p.wrap("sign with "+s.name, errors.New("Ed25519ph is not supported: pass crypto.Hash(0) and the message"), nil)
	}
	if o, ok := opts.(*ed25519.Options); ok && o.Context != "" {
		return nil, s.p.wrap("sign with "+s.name, errors.New("Ed25519ctx is not supported"), nil)
	}
	if err := s.p.usable(); err != nil {
		return nil, s.p.wrap("sign with "+s.name, err, nil)
	}
	var sig []byte
	err := s.p.raw.withSession(func(sh pkcs11.SessionHandle) error {
		if err := s.p.raw.ctx.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, s.h); err != nil {
			return fmt.Errorf("C_SignInit(CKM_EDDSA): %w", err)
		}
		var err error
		if sig, err = s.p.raw.ctx.Sign(sh, message); err != nil {
			return fmt.Errorf("C_Sign: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, s.p.wrap("sign with "+s.name, err, nil)
	}
	return sig, nil
}
