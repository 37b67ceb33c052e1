package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
	stepp11 "go.step.sm/crypto/kms/pkcs11"

	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/uri"
)

// Errors for a token that cannot be reached. Like the Custody errors, they
// come wrapped in a *PKCS11Error.
var (
	ErrModuleNotFound = errors.New("PKCS#11 module not found")
	ErrTokenNotFound  = errors.New("PKCS#11 token not found")
)

// LabelPrefix marks the objects Sigil owns on a token: key "root" is the
// object labelled "sigil-root". ListKeys ignores everything else.
const LabelPrefix = "sigil-"

// PKCS11 is custody in a PKCS#11 token. ECDSA and RSA keys are generated
// and used through go.step.sm/crypto's kms/pkcs11 (crypto11 underneath);
// Ed25519 keys, which crypto11 cannot handle, through miekg/pkcs11 with the
// PKCS#11 3.0 EdDSA mechanisms. Every key is created sensitive and
// non-extractable, and CreateKey reads that back from the token before it
// reports success. Listing, attribute reads, Ed25519 and master-key wrapping
// use miekg/pkcs11 sessions of our own, because kms/pkcs11 offers none of
// them.
//
// Key names map to objects deterministically: label LabelPrefix+name and
// CKA_ID the first 8 bytes of SHA-256(name), so a restarted process finds a
// key from its name alone. PKCS#11 records no creation time, so
// KeyInfo.CreatedAt is zero.
//
// Concurrency: crypto11 keeps a pool of sessions, sized to
// min(max-sessions URI attribute (default 1024), the token's
// ulMaxRwSessionCount) and opened on demand; each Sign borrows one, so
// signing from many goroutines runs in parallel as far as the token allows
// (SoftHSM itself serialises most of the work: see BenchmarkSoftHSMSign).
// Ed25519 signing uses its own small pool (withSession). CreateKey is
// serialised per custody, because a token, unlike a database, has no
// uniqueness constraint to settle a race between two creations of one name.
type PKCS11 struct {
	redacted string // the URI with the PIN removed: the only form in errors
	pin      string // only for scrubbing it out of foreign error messages
	kms      *stepp11.PKCS11
	raw      *rawToken
	log      *slog.Logger

	mu      sync.RWMutex
	signers map[string]crypto.Signer
	closed  bool
	create  sync.Mutex
}

var (
	_ Custody      = (*PKCS11)(nil)
	_ KeyDestroyer = (*PKCS11)(nil)
)

// OpenPKCS11 opens custody on the token named by an RFC 7512 URI, e.g.
//
//	pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=sigil?pin-value=1234
//	pkcs11:module-path=...;token=sigil;max-sessions=64?pin-source=/etc/sigil/pin
//
// The token is selected by token, serial or slot-id. Errors name the URI
// with the PIN redacted; a wrong PIN wraps ErrAuthFailed, a missing module
// ErrModuleNotFound, a missing token ErrTokenNotFound. A nil logger
// discards logs.
func OpenPKCS11(ctx context.Context, rawURI string, logger *slog.Logger) (*PKCS11, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	red := RedactURI(rawURI)
	u, err := uri.ParseWithScheme(stepp11.Scheme, rawURI)
	if err != nil {
		// The parser's message quotes the raw URI, PIN included: drop it.
		return nil, &PKCS11Error{URI: red, Op: "open", Detail: "not a valid pkcs11: URI"}
	}
	if u.Has("pin-prompt") {
		// A server has no terminal to prompt on (and u.Pin would try to).
		return nil, &PKCS11Error{URI: red, Op: "open", Detail: "pin-prompt is not supported: use pin-value or pin-source"}
	}
	pin := u.Pin()
	p := &PKCS11{redacted: red, pin: pin, log: logger, signers: map[string]crypto.Signer{}}
	if u.Has("pin-source") && pin == "" {
		return nil, p.wrap("open", fmt.Errorf("cannot read pin-source %q", u.Get("pin-source")), ErrAuthFailed)
	}
	module := u.Get("module-path")
	if module == "" {
		return nil, p.wrap("open", errors.New("module-path is required"), nil)
	}
	if filepath.IsAbs(module) {
		if _, err := os.Stat(module); err != nil {
			return nil, p.wrap("open", fmt.Errorf("module %s: %w", module, err), ErrModuleNotFound)
		}
	}
	kms, err := stepp11.New(ctx, apiv1.Options{Type: apiv1.PKCS11, URI: rawURI})
	if err != nil {
		return nil, p.wrap("open", err, nil)
	}
	p.kms = kms
	raw, err := openRawToken(module, u, pin)
	if err != nil {
		_ = kms.Close()
		return nil, p.wrap("open", err, nil)
	}
	p.raw = raw
	logger.InfoContext(ctx, "PKCS#11 custody opened", "uri", red, "token", raw.label, "max_rw_sessions", sessionsString(raw.maxRW))
	return p, nil
}

func sessionsString(n uint) string {
	switch n {
	case pkcs11.CK_EFFECTIVELY_INFINITE:
		return "unlimited"
	case pkcs11.CK_UNAVAILABLE_INFORMATION:
		return "unknown"
	}
	return strconv.FormatUint(uint64(n), 10)
}

// objectFor maps a Sigil key name to its token label and CKA_ID. The ID is
// derived from the name, not random, so a restarted process finds the key
// from its name alone.
func objectFor(name string) (label string, id []byte) {
	sum := sha256.Sum256([]byte(name))
	return LabelPrefix + name, sum[:8]
}

func keyURI(name string) string {
	label, id := objectFor(name)
	return "pkcs11:id=" + hex.EncodeToString(id) + ";object=" + label
}

// CreateKey generates a key pair in the token.
func (p *PKCS11) CreateKey(ctx context.Context, name string, typ KeyType) (KeyInfo, error) {
	if err := ValidateName(name); err != nil {
		return KeyInfo{}, p.wrap("create key", err, nil)
	}
	if !typ.Valid() {
		return KeyInfo{}, p.wrap("create key "+name, fmt.Errorf("%q", typ), ErrBadKeyType)
	}
	req := apiv1.CreateKeyRequest{Name: keyURI(name)}
	switch typ {
	case ECDSAP256:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA256
	case ECDSAP384:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA384
	case RSA2048, RSA3072, RSA4096:
		req.SignatureAlgorithm = apiv1.SHA256WithRSA
		req.Bits, _ = strconv.Atoi(strings.TrimPrefix(string(typ), "rsa-"))
	case Ed25519:
		// Generated through miekg/pkcs11 below: crypto11 has no EdDSA.
	}
	if err := p.usable(); err != nil {
		return KeyInfo{}, p.wrap("create key "+name, err, nil)
	}
	p.create.Lock()
	defer p.create.Unlock()
	// kms/pkcs11 looks for an existing pair by id AND label; a half-matching
	// object (same label, other id) would slip through, so check the label.
	if found, err := p.raw.findPrivate(objectFor(name)); err != nil {
		return KeyInfo{}, p.wrap("create key "+name, err, nil)
	} else if found {
		return KeyInfo{}, p.wrap("create key "+name, errors.New("object exists on the token"), ErrKeyExists)
	}
	var pub crypto.PublicKey
	if typ == Ed25519 {
		edPub, err := p.raw.generateEd25519(objectFor(name))
		if err != nil {
			return KeyInfo{}, p.wrap("create key "+name, err, nil)
		}
		pub = edPub
	} else {
		resp, err := p.kms.CreateKey(&req)
		if err != nil {
			return KeyInfo{}, p.wrap("create key "+name, err, nil)
		}
		pub = resp.PublicKey
	}
	// Never report success for a key that could leave the token, and do not
	// leave such a key behind either.
	if err := p.raw.checkNonExtractable(objectFor(name)); err != nil {
		if derr := p.raw.destroyPair(objectFor(name)); derr != nil {
			err = fmt.Errorf("%w (and removing it failed: %w)", err, derr)
		}
		return KeyInfo{}, p.wrap("create key "+name, err, nil)
	}
	p.log.InfoContext(ctx, "PKCS#11 key created", "key", name, "type", string(typ), "uri", p.redacted)
	return KeyInfo{Name: name, Type: typ, Public: pub}, nil
}

// Signer returns a signer backed by the token key. Signers are cached per
// name: finding a key pair costs several token round trips.
func (p *PKCS11) Signer(ctx context.Context, name string) (crypto.Signer, error) {
	if err := ValidateName(name); err != nil {
		return nil, p.wrap("signer", err, nil)
	}
	if err := p.usable(); err != nil {
		return nil, p.wrap("signer "+name, err, nil)
	}
	p.mu.RLock()
	s, ok := p.signers[name]
	p.mu.RUnlock()
	if ok {
		return s, nil
	}
	ckk, h, err := p.raw.keyType(objectFor(name))
	if err != nil {
		return nil, p.wrap("signer "+name, err, nil)
	}
	if ckk == ckkECEdwards {
		pub, err := p.raw.edPublic(objectFor(name))
		if err != nil {
			return nil, p.wrap("signer "+name, err, nil)
		}
		s = &edSigner{p: p, name: name, pub: pub, h: h}
	} else {
		inner, err := p.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: keyURI(name)})
		if err != nil {
			return nil, p.wrap("signer "+name, err, nil)
		}
		s = &p11Signer{p: p, name: name, inner: inner}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, p.wrap("signer "+name, errClosed, nil)
	}
	if cached, ok := p.signers[name]; ok {
		return cached, nil
	}
	p.signers[name] = s
	return s, nil
}

// DestroyKey destroys the named key pair on the token and drops its
// cached signer.
func (p *PKCS11) DestroyKey(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return p.wrap("destroy key", err, nil)
	}
	if err := p.usable(); err != nil {
		return p.wrap("destroy key "+name, err, nil)
	}
	p.create.Lock()
	defer p.create.Unlock()
	if found, err := p.raw.findPrivate(objectFor(name)); err != nil {
		return p.wrap("destroy key "+name, err, nil)
	} else if !found {
		return p.wrap("destroy key "+name, errors.New("no such key on the token"), ErrKeyNotFound)
	}
	p.mu.Lock()
	delete(p.signers, name)
	p.mu.Unlock()
	if err := p.raw.destroyPair(objectFor(name)); err != nil {
		return p.wrap("destroy key "+name, err, nil)
	}
	p.log.InfoContext(ctx, "PKCS#11 key destroyed", "key", name, "uri", p.redacted)
	return nil
}

// Key describes the named key.
func (p *PKCS11) Key(ctx context.Context, name string) (KeyInfo, error) {
	if err := ValidateName(name); err != nil {
		return KeyInfo{}, p.wrap("key", err, nil)
	}
	if err := p.usable(); err != nil {
		return KeyInfo{}, p.wrap("key "+name, err, nil)
	}
	ckk, _, err := p.raw.keyType(objectFor(name))
	if err != nil {
		return KeyInfo{}, p.wrap("key "+name, err, nil)
	}
	var pub crypto.PublicKey
	if ckk == ckkECEdwards {
		pub, err = p.raw.edPublic(objectFor(name))
	} else {
		pub, err = p.kms.GetPublicKey(&apiv1.GetPublicKeyRequest{Name: keyURI(name)})
	}
	if err != nil {
		return KeyInfo{}, p.wrap("key "+name, err, nil)
	}
	typ, err := typeOf(pub)
	if err != nil {
		return KeyInfo{}, p.wrap("key "+name, err, nil)
	}
	// PKCS#11 keeps no creation time, so CreatedAt stays zero.
	return KeyInfo{Name: name, Type: typ, Public: pub}, nil
}

// ListKeys lists the token's private keys labelled LabelPrefix+name.
func (p *PKCS11) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	if err := p.usable(); err != nil {
		return nil, p.wrap("list keys", err, nil)
	}
	labels, err := p.raw.privateLabels()
	if err != nil {
		return nil, p.wrap("list keys", err, nil)
	}
	var out []KeyInfo
	for _, l := range labels {
		name, ok := strings.CutPrefix(l, LabelPrefix)
		if !ok || ValidateName(name) != nil {
			continue
		}
		ki, err := p.Key(ctx, name)
		if errors.Is(err, ErrKeyNotFound) {
			// A private key whose ID is not the one Sigil derives: not ours.
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ki)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Ping asks the token for its info.
func (p *PKCS11) Ping(ctx context.Context) error {
	if err := p.usable(); err != nil {
		return p.wrap("ping", err, nil)
	}
	if err := p.raw.ping(); err != nil {
		return p.wrap("ping", err, nil)
	}
	return nil
}

// Close closes the sessions and, when it is the last user, finalises the
// module.
func (p *PKCS11) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	clear(p.signers)
	p.mu.Unlock()
	// Our raw session first: crypto11 finalises the module when its last
	// context closes, which would invalidate it.
	p.raw.closeSession()
	err := p.kms.Close()
	p.raw.destroy()
	if err != nil {
		return p.wrap("close", err, nil)
	}
	return nil
}

func (p *PKCS11) usable() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return errClosed
	}
	return nil
}

// p11Signer labels and redacts errors of the crypto11 signer, and refuses
// to sign once custody is closed.
type p11Signer struct {
	p     *PKCS11
	name  string
	inner crypto.Signer
}

func (s *p11Signer) Public() crypto.PublicKey { return s.inner.Public() }

func (s *p11Signer) Sign(rnd io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if err := s.p.usable(); err != nil {
		return nil, s.p.wrap("sign with "+s.name, err, nil)
	}
	if _, ok := s.inner.Public().(*ecdsa.PublicKey); ok && opts != nil && opts.HashFunc() != 0 && len(digest) != opts.HashFunc().Size() {
		return nil, s.p.wrap("sign with "+s.name, fmt.Errorf("digest is %d bytes, %v wants %d", len(digest), opts.HashFunc(), opts.HashFunc().Size()), nil)
	}
	if _, ok := s.inner.Public().(*rsa.PublicKey); ok && opts == nil {
		return nil, s.p.wrap("sign with "+s.name, errors.New("RSA signing needs SignerOpts"), nil)
	}
	sig, err := s.inner.Sign(rnd, digest, opts)
	if err != nil {
		return nil, s.p.wrap("sign with "+s.name, err, nil)
	}
	return sig, nil
}

// PKCS11Error is a failure of PKCS#11 custody. Its message names the token
// URI with the PIN redacted and never carries the text of a foreign error
// unscrubbed. errors.Is matches Kind (ErrAuthFailed, ErrKeyNotFound, ...)
// and, when the token answered with a CKR_* code, pkcs11.Error(Code).
type PKCS11Error struct {
	URI    string // redacted
	Op     string
	Kind   error // one of this package's sentinels, or nil
	Code   uint  // CKR_* return value, 0 when the failure was not the token's
	Detail string
}

func (e *PKCS11Error) Error() string {
	var b strings.Builder
	b.WriteString("pkcs11 ")
	b.WriteString(e.URI)
	b.WriteString(": ")
	b.WriteString(e.Op)
	if e.Kind != nil {
		b.WriteString(": ")
		b.WriteString(e.Kind.Error())
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

// Unwrap exposes the sentinel and the CKR code, not the original error:
// that may quote the PIN (go.step.sm's URI parser does).
func (e *PKCS11Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Code != 0 {
		errs = append(errs, pkcs11.Error(e.Code))
	}
	return errs
}

// wrap turns any error into a *PKCS11Error, classifying it when kind is nil.
func (p *PKCS11) wrap(op string, err error, kind error) error {
	var pe *PKCS11Error
	if errors.As(err, &pe) {
		return err
	}
	e := &PKCS11Error{URI: p.redacted, Op: op, Kind: kind, Detail: p.scrub(err.Error())}
	var code pkcs11.Error
	if errors.As(err, &code) {
		e.Code = uint(code)
	}
	if e.Kind == nil {
		e.Kind = classify(err, e.Code)
	}
	if e.Kind != nil && e.Detail == e.Kind.Error() {
		e.Detail = ""
	}
	return e
}

func classify(err error, code uint) error {
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED,
		pkcs11.CKR_USER_NOT_LOGGED_IN:
		return ErrAuthFailed
	case pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_TOKEN_NOT_RECOGNIZED:
		return ErrTokenNotFound
	case pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_DOMAIN_PARAMS_INVALID:
		return ErrBadKeyType
	}
	var nf apiv1.NotFoundError
	var ae apiv1.AlreadyExistsError
	msg := err.Error()
	switch {
	case errors.Is(err, errClosed):
		return nil
	case errors.Is(err, ErrBadWrappedKey):
		return ErrBadWrappedKey
	case errors.Is(err, ErrKeyNotFound):
		return ErrKeyNotFound
	case errors.Is(err, ErrTokenNotFound):
		return ErrTokenNotFound
	case errors.Is(err, ErrModuleNotFound):
		return ErrModuleNotFound
	case errors.As(err, &nf), strings.Contains(msg, "was not found"):
		return ErrKeyNotFound
	case errors.As(err, &ae):
		return ErrKeyExists
	case strings.Contains(msg, "could not find PKCS#11 token"), strings.Contains(msg, "no token"):
		return ErrTokenNotFound
	case strings.Contains(msg, "failed to open module"):
		return ErrModuleNotFound
	}
	return nil
}

// scrub removes the PIN from a foreign error message. Substring
// replacement, not parsing: whatever form the message quotes it in.
func (p *PKCS11) scrub(msg string) string {
	if p.pin != "" {
		msg = strings.ReplaceAll(msg, p.pin, "REDACTED")
		if esc := url.QueryEscape(p.pin); esc != p.pin {
			msg = strings.ReplaceAll(msg, esc, "REDACTED")
		}
	}
	return msg
}

// RedactURI returns a PKCS#11 URI with the value of every pin-value
// attribute replaced by REDACTED, wherever it appears (path or query, any
// case, percent-encoded name). Everything else is kept, so the result still
// says which module and token were meant.
func RedactURI(raw string) string {
	var b strings.Builder
	start := 0
	inPIN := false
	for i := 0; i <= len(raw); i++ {
		if i < len(raw) && !strings.ContainsRune(";?&", rune(raw[i])) {
			continue
		}
		seg := raw[start:i]
		switch {
		case isPINAttr(seg):
			name, _, _ := strings.Cut(seg, "=")
			b.WriteString(name + "=REDACTED")
			inPIN = true
		case inPIN && !strings.Contains(seg, "="):
			// An unescaped separator inside the PIN (invalid, but seen in
			// hand-written configuration): the rest is still PIN.
		default:
			b.WriteString(seg)
			inPIN = false
		}
		if i < len(raw) {
			b.WriteByte(raw[i])
		}
		start = i + 1
	}
	return b.String()
}

func isPINAttr(attr string) bool {
	name, _, ok := strings.Cut(attr, "=")
	if !ok {
		return false
	}
	key := strings.TrimPrefix(strings.ToLower(name), "pkcs11:")
	if dec, err := url.PathUnescape(key); err == nil {
		key = strings.ToLower(dec)
	}
	return strings.TrimSpace(key) == "pin-value"
}

// KeyAttributes reads the protection attributes of the named key's private
// object from the token (for audits: Sigil's keys are always sensitive and
// never extractable).
func (p *PKCS11) KeyAttributes(ctx context.Context, name string) (KeyAttributes, error) {
	if err := ValidateName(name); err != nil {
		return KeyAttributes{}, p.wrap("key attributes", err, nil)
	}
	a, err := p.raw.attributes(objectFor(name))
	if err != nil {
		return KeyAttributes{}, p.wrap("key attributes "+name, err, nil)
	}
	return a, nil
}
