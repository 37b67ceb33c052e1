// Package ca is Sigil's certificate authority core: the CA hierarchy held
// in key custody, signing profiles, issuance with pre-issuance linting, the
// certificate inventory, revocation, sharded CRLs and OCSP.
//
// It knows nothing of ACME, gRPC or HTTP: front ends call Authority methods
// and serve the URL paths this package defines under Config.PublicURL:
//
//	CRLPath(issuerID, shard)  /crl/<issuerID>/<shard>.crl  DER CRL      -> Authority.CRL
//	IssuerCertPath(issuerID)  /ca/<issuerID>.der           DER cert     -> Authority.IssuerCertificate
//	OCSPPath                  /ocsp                        RFC 6960     -> Authority.OCSP
//
// Every certificate is recorded in the inventory in a committed transaction
// (concurrent records share one, see groupcommit.go) before it is returned,
// so no certificate can reach a caller that the inventory does not know. Before the real signature, the to-be-signed
// certificate is signed with a throwaway key and linted with zlint.
package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/zmap/zlint/v3/lint"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/groupcommit"
	"github.com/sigil-ca/sigil/storage"
)

// Store is the part of storage.Store the CA uses. storage.Store satisfies it.
type Store interface {
	InTx(ctx context.Context, fn func(tx storage.Repos) error) error
	Certificates() storage.Certificates
	Issuers() storage.Issuers
	CRLs() storage.CRLs
}

// loadTimeout bounds the storage read New performs.
const loadTimeout = 30 * time.Second

// Issuer kinds as recorded in storage.Issuer.Kind.
const (
	KindRoot         = "root"
	KindIntermediate = "intermediate"
)

// Authority is the CA. It is safe for concurrent use.
type Authority struct {
	custody  hsm.Custody
	store    Store
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	profiles map[string]*profile
	lintReg  lint.Registry // built once: excludes costly and inapplicable lints
	linter   *linter       // runs lintReg before each issuance
	keys     *keyChecker

	mu      sync.RWMutex
	issuers []*issuer // ordered by creation
	byID    map[string]*issuer

	lintMu   sync.Mutex
	lintKeys map[string]*lintShape // throwaway lint keys and their algorithm by key type

	crls  crlCache
	ocsps ocspState

	inventory *groupcommit.Committer[*pendingRecord] // issued certificates' records

	// afterPut, if set (tests only), runs inside the issuance transaction
	// after the certificate is signed and recorded, before commit; an error
	// or panic from it aborts the transaction.
	afterPut func(rec *storage.Certificate) error
}

// issuer is a loaded CA certificate.
type issuer struct {
	rec  *storage.Issuer
	cert *x509.Certificate
	// keyHash is SHA-1 and SHA-256 of the subjectPublicKey BIT STRING, the
	// forms OCSP CertIDs identify an issuer by.
	keyHashSHA1   []byte
	keyHashSHA256 []byte
	// chain is cert followed by its issuers up to the root; chainPEM is
	// chain PEM encoded, once, for every certificate it issues.
	chain    []*x509.Certificate
	chainPEM string
	// served is chain without a self-signed root: what a server sends
	// after a leaf. Worked out once, as it checks signatures.
	served []*x509.Certificate

	signerMu sync.Mutex
	signer   crypto.Signer

	// revocation status of the issuer's own certificate, from the
	// inventory, rechecked every issuerRecheck (see usable).
	revMu      sync.Mutex
	revoked    bool
	revChecked time.Time
}

// New returns an Authority over custody and store and loads any existing
// hierarchy (bounded by loadTimeout; call Load with a context to reload).
func New(custody hsm.Custody, store Store, cfg Config, logger *slog.Logger) (*Authority, error) {
	if custody == nil || store == nil {
		return nil, errors.New("ca: New: custody and store are required")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	profiles, err := compileProfiles(cfg.TrustDomain, cfg.Profiles)
	if err != nil {
		return nil, fmt.Errorf("ca: config: %w", err)
	}
	reg, err := newLintRegistry()
	if err != nil {
		return nil, fmt.Errorf("ca: lint registry: %w", err)
	}
	a := &Authority{
		custody:  custody,
		store:    store,
		cfg:      cfg,
		log:      logger,
		now:      cfg.Now,
		profiles: profiles,
		lintReg:  reg,
		linter:   newLinter(reg),
		keys:     newKeyChecker(),
		byID:     map[string]*issuer{},
		lintKeys: map[string]*lintShape{},
	}
	a.inventory = groupcommit.New(maxBatch, a.commitRecords, nil, func(r any) {
		a.log.Error("ca: recording certificates panicked; their issuances failed", "panic", r)
	})
	a.crls.init()
	a.ocsps.init()
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	if err := a.Load(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// Load (re)reads the issuers from storage. New calls it; call it again
// after another process changed the hierarchy.
func (a *Authority) Load(ctx context.Context) error {
	recs, err := a.store.Issuers().List(ctx)
	if err != nil {
		return errf(KindInternal, "load", err, "listing issuers")
	}
	list := make([]*issuer, 0, len(recs))
	byID := make(map[string]*issuer, len(recs))
	for _, r := range recs {
		is, err := newIssuer(r)
		if err != nil {
			return errf(KindInternal, "load", err, "issuer %s", r.ID)
		}
		// Keep an already fetched signer across reloads.
		a.mu.RLock()
		if old := a.byID[r.ID]; old != nil {
			old.signerMu.Lock()
			is.signer = old.signer
			old.signerMu.Unlock()
			// A revocation is permanent: keep knowing it.
			old.revMu.Lock()
			is.revoked = old.revoked
			old.revMu.Unlock()
		}
		a.mu.RUnlock()
		list = append(list, is)
		byID[r.ID] = is
	}
	a.mu.Lock()
	a.issuers, a.byID = list, byID
	a.mu.Unlock()
	return nil
}

func newIssuer(r *storage.Issuer) (*issuer, error) {
	cert, err := x509.ParseCertificate(r.DER)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	bits, err := publicKeyBits(cert.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, err
	}
	h1 := sha1.Sum(bits)
	h2 := sha256.Sum256(bits)
	chain := []*x509.Certificate{cert}
	for i, der := range r.ChainDER {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parse chain certificate %d: %w", i+1, err)
		}
		chain = append(chain, c)
	}
	var served []*x509.Certificate
	for _, c := range chain {
		if bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil {
			continue // a root: the relying party has it already
		}
		served = append(served, c)
	}
	return &issuer{rec: r, cert: cert, keyHashSHA1: h1[:], keyHashSHA256: h2[:], chain: chain, chainPEM: PEMCertificates(chain...),
		served: served}, nil
}

// publicKeyBits returns the subjectPublicKey BIT STRING contents of a DER
// SubjectPublicKeyInfo.
func publicKeyBits(spki []byte) ([]byte, error) {
	var info struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if rest, err := asn1.Unmarshal(spki, &info); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("malformed SubjectPublicKeyInfo: %v", err)
	}
	return info.PublicKey.Bytes, nil
}

// issuerID is the hex SHA-1 of the issuer's public key bits: stable, unique
// per key, and equal to the OCSP issuer key hash.
func issuerID(spki []byte) (string, error) {
	bits, err := publicKeyBits(spki)
	if err != nil {
		return "", err
	}
	h := sha1.Sum(bits)
	return hex.EncodeToString(h[:]), nil
}

// Initialized reports whether an active intermediate exists.
func (a *Authority) Initialized() bool {
	return a.activeIssuer() != nil
}

func (a *Authority) activeIssuer() *issuer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for i := len(a.issuers) - 1; i >= 0; i-- {
		is := a.issuers[i]
		if is.rec.Active && is.rec.Kind == KindIntermediate {
			return is
		}
	}
	return nil
}

func (a *Authority) rootIssuer() *issuer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for i := len(a.issuers) - 1; i >= 0; i-- {
		if a.issuers[i].rec.Kind == KindRoot {
			return a.issuers[i]
		}
	}
	return nil
}

func (a *Authority) issuerByID(id string) *issuer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.byID[id]
}

// Root returns the root certificate, or nil before initialisation.
func (a *Authority) Root() *x509.Certificate {
	if r := a.rootIssuer(); r != nil {
		return r.cert
	}
	return nil
}

// Chain returns the chain served with new certificates: the active
// intermediate then the root. Nil before initialisation.
func (a *Authority) Chain() []*x509.Certificate {
	is := a.activeIssuer()
	if is == nil {
		return nil
	}
	return a.chainOf(is)
}

// chainOf returns is followed by its issuers up to the root (a copy: the
// caller may append).
func (a *Authority) chainOf(is *issuer) []*x509.Certificate {
	return append([]*x509.Certificate(nil), is.chain...)
}

// IssuerInfo describes one issuer.
type IssuerInfo struct {
	ID          string
	Kind        string // KindRoot or KindIntermediate
	KeyName     string // key in custody; empty for an external root
	Active      bool   // signs new certificates
	Certificate *x509.Certificate
	Chain       []*x509.Certificate // the certificate then its issuers up to the root
	Served      []*x509.Certificate // Chain without a self-signed root: what a server sends after a leaf
	CreatedAt   time.Time
}

// Issuers lists every issuer, oldest first.
func (a *Authority) Issuers() []IssuerInfo {
	a.mu.RLock()
	list := append([]*issuer(nil), a.issuers...)
	a.mu.RUnlock()
	out := make([]IssuerInfo, 0, len(list))
	for _, is := range list {
		out = append(out, IssuerInfo{
			ID: is.rec.ID, Kind: is.rec.Kind, KeyName: is.rec.KeyName, Active: is.rec.Active,
			Certificate: is.cert, Chain: a.chainOf(is), Served: slices.Clone(is.served), CreatedAt: is.rec.CreatedAt,
		})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// IssuerCertificate returns an issuer's certificate (for the AIA URL).
func (a *Authority) IssuerCertificate(id string) (*x509.Certificate, error) {
	is := a.issuerByID(id)
	if is == nil {
		return nil, errf(KindNotFound, "issuer", nil, "no issuer %q", id)
	}
	return is.cert, nil
}

// signerFor returns the custody signer of an issuer, fetched once.
func (a *Authority) signerFor(ctx context.Context, is *issuer) (crypto.Signer, error) {
	is.signerMu.Lock()
	defer is.signerMu.Unlock()
	if is.signer != nil {
		return is.signer, nil
	}
	if is.rec.KeyName == "" {
		return nil, errf(KindPolicyViolation, "sign", nil, "issuer %s has no key in custody (external root)", is.rec.ID)
	}
	s, err := a.custody.Signer(ctx, is.rec.KeyName)
	if err != nil {
		return nil, errf(KindInternal, "sign", err, "custody signer %q", is.rec.KeyName)
	}
	is.signer = s
	return s, nil
}
