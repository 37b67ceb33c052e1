package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/miekg/pkcs11"
)

// PKCS11URI is the part of an RFC 7512 URI the HSM ceiling needs.
type PKCS11URI struct {
	Module, Token, PIN string
}

// ParsePKCS11URI reads module-path, token and pin-value from
// pkcs11:module-path=…;token=…?pin-value=….
func ParsePKCS11URI(s string) (PKCS11URI, error) {
	var u PKCS11URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("PKCS#11 URI %q: want pkcs11:…", s)
	}
	path, query, _ := strings.Cut(rest, "?")
	for _, attr := range strings.Split(path, ";") {
		k, v, _ := strings.Cut(attr, "=")
		v, err := url.PathUnescape(v)
		if err != nil {
			return u, fmt.Errorf("PKCS#11 URI attribute %s: %w", k, err)
		}
		switch k {
		case "module-path":
			u.Module = v
		case "token":
			u.Token = v
		}
	}
	for _, attr := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(attr, "=")
		if k == "pin-value" {
			v, err := url.QueryUnescape(v)
			if err != nil {
				return u, fmt.Errorf("PKCS#11 URI pin-value: %w", err)
			}
			u.PIN = v
		}
	}
	if u.Module == "" || u.Token == "" {
		return u, fmt.Errorf("PKCS#11 URI needs module-path and token")
	}
	return u, nil
}

// HSMSignCeiling is the token's raw P-256 signing rate: C_SignInit +
// C_Sign (CKM_ECDSA over a SHA-256 digest) in a loop, one session per
// goroutine. The key pair is a token object, as a CA key is (SoftHSM 2.6
// signed with a session object ≈1.5× faster here), labelled
// sigil-bench-ceiling and destroyed afterwards.
func HSMSignCeiling(ctx context.Context, uri PKCS11URI, n int, d time.Duration) (c Ceiling, err error) {
	p := pkcs11.New(uri.Module)
	if p == nil {
		return c, fmt.Errorf("HSM ceiling: cannot load %s", uri.Module)
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return c, fmt.Errorf("HSM ceiling: initialize: %w", err)
	}
	defer p.Destroy()
	defer func() { _ = p.Finalize() }()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return c, fmt.Errorf("HSM ceiling: slots: %w", err)
	}
	slot, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " \x00") == uri.Token {
			slot, found = s, true
			break
		}
	}
	if !found {
		return c, fmt.Errorf("HSM ceiling: no token %q", uri.Token)
	}
	n = max(n, 1)
	sessions := make([]pkcs11.SessionHandle, 0, n)
	defer func() {
		for _, sh := range sessions {
			_ = p.CloseSession(sh)
		}
	}()
	for range n {
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return c, fmt.Errorf("HSM ceiling: open session: %w", err)
		}
		sessions = append(sessions, sh)
	}
	if err := p.Login(sessions[0], pkcs11.CKU_USER, uri.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		return c, fmt.Errorf("HSM ceiling: login: %w", err)
	}
	p256OID := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	const label = "sigil-bench-ceiling"
	pub, priv, err := p.GenerateKeyPair(sessions[0],
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256OID),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		})
	if err != nil {
		return c, fmt.Errorf("HSM ceiling: generate key: %w", err)
	}
	defer func() {
		derr := errors.Join(p.DestroyObject(sessions[0], priv), p.DestroyObject(sessions[0], pub))
		if derr != nil && err == nil {
			err = fmt.Errorf("HSM ceiling: remove the %s key pair: %w", label, derr)
		}
	}()
	digest := sha256.Sum256([]byte("sigil-bench"))
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	name := fmt.Sprintf("raw PKCS#11 P-256 C_Sign, %d sessions", n)
	return measureLoop(ctx, name, n, d, func(w int, _ int64) error {
		if err := p.SignInit(sessions[w], mech, priv); err != nil {
			return err
		}
		_, err := p.Sign(sessions[w], digest[:])
		return err
	})
}
