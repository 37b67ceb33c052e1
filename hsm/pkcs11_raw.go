package hsm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
	"go.step.sm/crypto/kms/uri"
)

// rawToken is one logged-in miekg/pkcs11 session on the custody token, for
// what kms/pkcs11 cannot do: enumerate objects, read attributes, wrap keys.
// PKCS#11 sessions are not safe for concurrent use, hence mu.
type rawToken struct {
	ctx   *pkcs11.Ctx
	label string
	maxRW uint

	slot uint

	mu      sync.Mutex
	session pkcs11.SessionHandle
	open    bool
	idle    []pkcs11.SessionHandle // for EdDSA signing, see withSession
}

// openRawToken opens a session on the token the URI selects. crypto11 has
// already initialised the module in this process, so C_Initialize answers
// CKR_CRYPTOKI_ALREADY_INITIALIZED, which is fine; for the same reason we
// never C_Finalize (crypto11 does, when its last context closes).
func openRawToken(module string, u *uri.URI, pin string) (*rawToken, error) {
	ctx := pkcs11.New(module)
	if ctx == nil {
		return nil, fmt.Errorf("module %s cannot be loaded: %w", module, ErrModuleNotFound)
	}
	if err := ctx.Initialize(); err != nil && !isCode(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("C_Initialize: %w", err)
	}
	slot, info, err := findSlot(ctx, u)
	if err != nil {
		ctx.Destroy()
		return nil, err
	}
	sh, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		ctx.Destroy()
		return nil, fmt.Errorf("C_OpenSession: %w", err)
	}
	// Login state is per application, and crypto11 has logged in already;
	// log in anyway so this does not depend on the order of events.
	if err := ctx.Login(sh, pkcs11.CKU_USER, pin); err != nil && !isCode(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		_ = ctx.CloseSession(sh)
		ctx.Destroy()
		return nil, fmt.Errorf("C_Login: %w", err)
	}
	return &rawToken{ctx: ctx, slot: slot, label: strings.TrimRight(info.Label, " \x00"), maxRW: info.MaxRwSessionCount, session: sh, open: true}, nil
}

func isCode(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}

func findSlot(ctx *pkcs11.Ctx, u *uri.URI) (uint, pkcs11.TokenInfo, error) {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("C_GetSlotList: %w", err)
	}
	label, serial, slotID := u.Get("token"), u.Get("serial"), u.Get("slot-id")
	for _, s := range slots {
		info, err := ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		switch {
		case slotID != "" && slotID == strconv.FormatUint(uint64(s), 10),
			label != "" && strings.TrimRight(info.Label, " \x00") == label,
			serial != "" && strings.TrimRight(info.SerialNumber, " \x00") == serial:
			return s, info, nil
		}
	}
	return 0, pkcs11.TokenInfo{}, ErrTokenNotFound
}

func (r *rawToken) ping() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.open {
		return errClosed
	}
	if _, err := r.ctx.GetSessionInfo(r.session); err != nil {
		return fmt.Errorf("C_GetSessionInfo: %w", err)
	}
	return nil
}

// find returns the handles of objects matching template. Caller holds mu.
func (r *rawToken) find(template []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if !r.open {
		return nil, errClosed
	}
	if err := r.ctx.FindObjectsInit(r.session, template); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := r.ctx.FindObjects(r.session, 64)
		if err != nil {
			_ = r.ctx.FindObjectsFinal(r.session)
			return nil, fmt.Errorf("C_FindObjects: %w", err)
		}
		all = append(all, hs...)
		if len(hs) < 64 {
			break
		}
	}
	if err := r.ctx.FindObjectsFinal(r.session); err != nil {
		return nil, fmt.Errorf("C_FindObjectsFinal: %w", err)
	}
	return all, nil
}

// findPrivate reports whether a private key with this label exists (any ID).
func (r *rawToken) findPrivate(label string, _ []byte) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, err := r.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	})
	return len(hs) > 0, err
}

// privateLabels lists the labels of every private key on the token.
func (r *rawToken) privateLabels() ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, err := r.find([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)})
	if err != nil {
		return nil, err
	}
	labels := make([]string, 0, len(hs))
	for _, h := range hs {
		attrs, err := r.ctx.GetAttributeValue(r.session, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err != nil {
			return nil, fmt.Errorf("C_GetAttributeValue(CKA_LABEL): %w", err)
		}
		labels = append(labels, string(attrs[0].Value))
	}
	return labels, nil
}

// KeyAttributes are the protection attributes of a private key object.
type KeyAttributes struct {
	Sensitive, Extractable, AlwaysSensitive, NeverExtractable, Token bool
}

// checkNonExtractable verifies the private key labelled label with this ID
// is sensitive and non-extractable.
func (r *rawToken) checkNonExtractable(label string, id []byte) error {
	a, err := r.attributes(label, id)
	if err != nil {
		return err
	}
	if !a.Sensitive || a.Extractable || !a.Token {
		return fmt.Errorf("token created key %q with sensitive=%v extractable=%v token=%v: refusing it", label, a.Sensitive, a.Extractable, a.Token)
	}
	return nil
}

func (r *rawToken) attributes(label string, id []byte) (KeyAttributes, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, err := r.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return KeyAttributes{}, err
	}
	if len(hs) != 1 {
		return KeyAttributes{}, fmt.Errorf("%d private keys labelled %q: %w", len(hs), label, ErrKeyNotFound)
	}
	attrs, err := r.ctx.GetAttributeValue(r.session, hs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
	})
	if err != nil {
		return KeyAttributes{}, fmt.Errorf("C_GetAttributeValue: %w", err)
	}
	b := func(i int) bool { return len(attrs[i].Value) == 1 && attrs[i].Value[0] != 0 }
	return KeyAttributes{Sensitive: b(0), Extractable: b(1), AlwaysSensitive: b(2), NeverExtractable: b(3), Token: b(4)}, nil
}

// destroyPair deletes the private and public key objects with this label
// and ID (a key that came out extractable, or one DestroyKey was asked to
// destroy).
func (r *rawToken) destroyPair(label string, id []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, err := r.find([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		if err := r.ctx.DestroyObject(r.session, h); err != nil {
			errs = append(errs, fmt.Errorf("C_DestroyObject: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (r *rawToken) closeSession() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open {
		_ = r.ctx.CloseSession(r.session)
		for _, sh := range r.idle {
			_ = r.ctx.CloseSession(sh)
		}
		r.idle = nil
		r.open = false
	}
}

// destroy unloads our handle on the module (dlclose is reference counted).
func (r *rawToken) destroy() {
	r.ctx.Destroy()
}
