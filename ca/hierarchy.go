package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
	"go.step.sm/crypto/pemutil"
)

// InitRequest describes a new hierarchy.
type InitRequest struct {
	CommonName      string // root common name; intermediates are "<CN> Intermediate <n>"
	Organization    string
	Country         string        // optional two-letter country code
	KeyType         hsm.KeyType   // default Config.KeyType
	RootTTL         time.Duration // default 10 years
	IntermediateTTL time.Duration // default 3 years, capped to the root's
}

// Key name prefixes in custody.
const (
	rootKeyPrefix = "ca-root-"
	intKeyPrefix  = "ca-int-"
	ocspKeyPrefix = "ca-ocsp-"
)

const (
	defaultRootTTL         = 10 * 365 * 24 * time.Hour
	defaultIntermediateTTL = 3 * 365 * 24 * time.Hour
)

func (r *InitRequest) defaults(a *Authority) error {
	if strings.TrimSpace(r.CommonName) == "" {
		return errors.New("common name is required")
	}
	if r.Country != "" && len(r.Country) != 2 {
		return fmt.Errorf("country %q must be a two-letter code", r.Country)
	}
	if r.KeyType == "" {
		r.KeyType = a.cfg.KeyType
	}
	if !r.KeyType.Valid() {
		return fmt.Errorf("KeyType %q: %w", r.KeyType, hsm.ErrBadKeyType)
	}
	if r.RootTTL <= 0 {
		r.RootTTL = defaultRootTTL
	}
	if r.IntermediateTTL <= 0 {
		r.IntermediateTTL = defaultIntermediateTTL
	}
	return nil
}

func caSubject(cn, org, country string) pkix.Name {
	n := pkix.Name{CommonName: cn}
	if org != "" {
		n.Organization = []string{org}
	}
	if country != "" {
		n.Country = []string{strings.ToUpper(country)}
	}
	return n
}

// InitHierarchy creates a root and an intermediate key in custody,
// self-signs the root, signs the intermediate (path length 0) and records
// both. It fails with ErrAlreadyInitialized if any issuer exists.
func (a *Authority) InitHierarchy(ctx context.Context, req InitRequest) error {
	const op = "init"
	if err := req.defaults(a); err != nil {
		return errf(KindBadRequest, op, err, "invalid request")
	}
	if err := a.checkNoIssuers(ctx, a.store.Issuers()); err != nil {
		return err
	}
	n, err := a.nextKeyIndex(ctx)
	if err != nil {
		return err
	}
	now := a.now()
	rootKey, err := a.createKey(ctx, op, rootKeyPrefix+strconv.Itoa(n), req.KeyType)
	if err != nil {
		return err
	}
	rootSigner, err := a.custody.Signer(ctx, rootKey.Name)
	if err != nil {
		return errf(KindInternal, op, err, "custody signer %q", rootKey.Name)
	}
	serial, err := randomSerial()
	if err != nil {
		return errf(KindInternal, op, err, "serial")
	}
	ski, err := subjectKeyID(rootKey.Public)
	if err != nil {
		return errf(KindInternal, op, err, "root key")
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               caSubject(req.CommonName, req.Organization, req.Country),
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(req.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// No path length on the root: zlint warns, and the intermediates'
		// pathlen 0 already bounds the hierarchy.
		MaxPathLen:   -1,
		SubjectKeyId: ski,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public, rootSigner)
	if err != nil {
		return errf(KindInternal, op, err, "self-signing the root")
	}
	rootCert, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return errf(KindInternal, op, err, "parsing the root")
	}
	rootID, err := issuerID(rootCert.RawSubjectPublicKeyInfo)
	if err != nil {
		return errf(KindInternal, op, err, "root key")
	}
	rootRec := &storage.Issuer{ID: rootID, Kind: KindRoot, KeyName: rootKey.Name, DER: rootDER, CreatedAt: now}

	intRec, intCert, err := a.newIntermediate(ctx, op, rootRec, rootCert, rootSigner, n, req.KeyType, req.IntermediateTTL, now)
	if err != nil {
		return err
	}
	err = a.store.InTx(ctx, func(tx storage.Repos) error {
		// Re-check inside the transaction: two concurrent inits must not
		// both record a hierarchy.
		if err := a.checkNoIssuers(ctx, tx.Issuers()); err != nil {
			return err
		}
		if err := tx.Issuers().Put(ctx, rootRec); err != nil {
			return errf(KindInternal, op, err, "recording the root")
		}
		// Root created first so List (ordered by CreatedAt) keeps the order.
		intRec.CreatedAt = now.Add(time.Microsecond)
		if err := tx.Issuers().Put(ctx, intRec); err != nil {
			return errf(KindInternal, op, err, "recording the intermediate")
		}
		return a.putCACert(ctx, tx, op, intCert, rootID)
	})
	if err != nil {
		return err
	}
	a.log.Info("ca: hierarchy initialized", "root", rootID, "intermediate", intRec.ID, "key_type", string(req.KeyType))
	return a.Load(ctx)
}

func (a *Authority) checkNoIssuers(ctx context.Context, iss storage.Issuers) error {
	list, err := iss.List(ctx)
	if err != nil {
		return errf(KindInternal, "init", err, "listing issuers")
	}
	if len(list) > 0 {
		return errf(KindConflict, "init", ErrAlreadyInitialized, "%d issuers recorded", len(list))
	}
	return nil
}

// checkNoOwnRoot fails with ErrAlreadyInitialized when a root in custody
// is recorded.
func (a *Authority) checkNoOwnRoot(ctx context.Context) error {
	list, err := a.store.Issuers().List(ctx)
	if err != nil {
		return errf(KindInternal, "init", err, "listing issuers")
	}
	for _, is := range list {
		if is.Kind == KindRoot && is.KeyName != "" {
			return errf(KindConflict, "init", ErrAlreadyInitialized,
				"`ca init --external-root` starts a hierarchy under an external root, but this CA has its own (rotate its intermediate with `sigil ca intermediate rotate`)")
		}
	}
	return nil
}

// newIntermediate creates key ca-int-<n> and signs an intermediate
// certificate for it with the root (path length 0).
func (a *Authority) newIntermediate(ctx context.Context, op string, rootRec *storage.Issuer, rootCert *x509.Certificate, rootSigner crypto.Signer, n int, kt hsm.KeyType, ttl time.Duration, now time.Time) (*storage.Issuer, *x509.Certificate, error) {
	key, err := a.createKey(ctx, op, intKeyPrefix+strconv.Itoa(n), kt)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, errf(KindInternal, op, err, "serial")
	}
	ski, err := subjectKeyID(key.Public)
	if err != nil {
		return nil, nil, errf(KindInternal, op, err, "intermediate key")
	}
	notAfter := now.Add(ttl)
	if notAfter.After(rootCert.NotAfter) {
		notAfter = rootCert.NotAfter
	}
	subj := caSubject(fmt.Sprintf("%s Intermediate %d", rootCert.Subject.CommonName, n), first(rootCert.Subject.Organization), first(rootCert.Subject.Country))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subj,
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		// digitalSignature is not needed: OCSP is signed by a delegated
		// responder. No EKU: EKU-chaining verifiers (Windows) would then
		// reject the OCSP responder certificate it issues.
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
		AuthorityKeyId:        rootCert.SubjectKeyId,
		CRLDistributionPoints: []string{a.CRLURL(rootRec.ID, 0)},
		OCSPServer:            []string{a.OCSPURL()},
		IssuingCertificateURL: []string{a.IssuerCertURL(rootRec.ID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, rootCert, key.Public, rootSigner)
	if err != nil {
		return nil, nil, errf(KindInternal, op, err, "signing the intermediate")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, errf(KindInternal, op, err, "parsing the intermediate")
	}
	id, err := issuerID(cert.RawSubjectPublicKeyInfo)
	if err != nil {
		return nil, nil, errf(KindInternal, op, err, "intermediate key")
	}
	rec := &storage.Issuer{
		ID: id, Kind: KindIntermediate, KeyName: key.Name, DER: der,
		ChainDER: append([][]byte{rootRec.DER}, rootRec.ChainDER...), Active: true, CreatedAt: now,
	}
	return rec, cert, nil
}

// putCACert records a CA certificate Sigil signed in the inventory, so it
// can be revoked (on its parent's CRL shard 0) and is never unknown.
func (a *Authority) putCACert(ctx context.Context, tx storage.Repos, op string, cert *x509.Certificate, parentID string) error {
	rec := &storage.Certificate{
		Serial:    serialHex(cert.SerialNumber),
		IssuerID:  parentID,
		Subject:   cert.Subject.String(),
		NotBefore: cert.NotBefore.UTC(),
		NotAfter:  cert.NotAfter.UTC(),
		Profile:   ProfileIntermediate,
		Requester: "sigil:hierarchy",
		DER:       cert.Raw,
		Status:    storage.CertValid,
		CRLShard:  0,
	}
	if err := tx.Certificates().Put(ctx, rec); err != nil {
		return errf(KindInternal, op, err, "recording CA certificate %s", rec.Serial)
	}
	return nil
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func (a *Authority) createKey(ctx context.Context, op, name string, kt hsm.KeyType) (hsm.KeyInfo, error) {
	k, err := a.custody.CreateKey(ctx, name, kt)
	if errors.Is(err, hsm.ErrKeyExists) {
		// A concurrent init or rotation took the name first.
		return hsm.KeyInfo{}, errf(KindConflict, op, err, "key %q already exists in custody (concurrent change?)", name)
	} else if err != nil {
		return hsm.KeyInfo{}, errf(KindInternal, op, err, "creating key %q in custody", name)
	}
	return k, nil
}

// nextKeyIndex returns 1 + the highest n among custody keys named
// ca-root-<n>, ca-int-<n>, so new keys never collide with old ones (even
// orphans of an interrupted init).
func (a *Authority) nextKeyIndex(ctx context.Context) (int, error) {
	keys, err := a.custody.ListKeys(ctx)
	if err != nil {
		return 0, errf(KindInternal, "init", err, "listing custody keys")
	}
	hi := 0
	for _, k := range keys {
		for _, p := range []string{rootKeyPrefix, intKeyPrefix} {
			if rest, ok := strings.CutPrefix(k.Name, p); ok {
				if v, err := strconv.Atoi(rest); err == nil && v > hi {
					hi = v
				}
			}
		}
	}
	return hi + 1, nil
}

// RotateIntermediate signs a new intermediate with the root (which must be
// in custody) and makes it the active issuer. Older intermediates stay
// recorded and keep signing CRLs and OCSP responses for their certificates.
func (a *Authority) RotateIntermediate(ctx context.Context) (IssuerInfo, error) {
	const op = "rotate"
	root := a.rootIssuer()
	if root == nil {
		return IssuerInfo{}, errf(KindNotInitialized, op, ErrNotInitialized, "no root")
	}
	rootSigner, err := a.signerFor(ctx, root)
	if err != nil {
		return IssuerInfo{}, err
	}
	kt := a.cfg.KeyType
	ttl := defaultIntermediateTTL
	if cur := a.activeIssuer(); cur != nil {
		if k, err := a.custody.Key(ctx, cur.rec.KeyName); err == nil {
			kt = k.Type
		}
		ttl = cur.cert.NotAfter.Sub(cur.cert.NotBefore) - backdate
	}
	n, err := a.nextKeyIndex(ctx)
	if err != nil {
		return IssuerInfo{}, err
	}
	now := a.now()
	rec, cert, err := a.newIntermediate(ctx, op, root.rec, root.cert, rootSigner, n, kt, ttl, now)
	if err != nil {
		return IssuerInfo{}, err
	}
	if err := a.installIntermediate(ctx, op, rec, cert, root.rec.ID, nil); err != nil {
		return IssuerInfo{}, err
	}
	return a.issuerInfo(rec.ID)
}

// installIntermediate records rec as the only active intermediate (and
// newRoot, if not nil and not yet recorded).
func (a *Authority) installIntermediate(ctx context.Context, op string, rec *storage.Issuer, cert *x509.Certificate, parentID string, newRoot *storage.Issuer) error {
	err := a.store.InTx(ctx, func(tx storage.Repos) error {
		existing, err := tx.Issuers().List(ctx)
		if err != nil {
			return errf(KindInternal, op, err, "listing issuers")
		}
		latest := time.Time{}
		for _, is := range existing {
			if is.ID == rec.ID {
				return errf(KindConflict, op, storage.ErrConflict, "issuer %s is already installed", rec.ID)
			}
			if is.CreatedAt.After(latest) {
				latest = is.CreatedAt
			}
		}
		if newRoot != nil {
			if newRoot.CreatedAt.IsZero() || !newRoot.CreatedAt.After(latest) {
				newRoot.CreatedAt = latest.Add(time.Millisecond)
			}
			latest = newRoot.CreatedAt
			if err := tx.Issuers().Put(ctx, newRoot); err != nil {
				return errf(KindInternal, op, err, "recording the root")
			}
		}
		// Keep List's CreatedAt order equal to installation order.
		if !rec.CreatedAt.After(latest) {
			rec.CreatedAt = latest.Add(time.Millisecond)
		}
		for _, is := range existing {
			if is.Kind == KindIntermediate && is.Active {
				if err := tx.Issuers().SetActive(ctx, is.ID, false); err != nil {
					return errf(KindInternal, op, err, "deactivating %s", is.ID)
				}
			}
		}
		if err := tx.Issuers().Put(ctx, rec); err != nil {
			return errf(KindInternal, op, err, "recording the intermediate")
		}
		if parentID != "" {
			return a.putCACert(ctx, tx, op, cert, parentID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	a.log.Info("ca: intermediate installed", "id", rec.ID, "key", rec.KeyName)
	return a.Load(ctx)
}

func (a *Authority) issuerInfo(id string) (IssuerInfo, error) {
	for _, in := range a.Issuers() {
		if in.ID == id {
			return in, nil
		}
	}
	return IssuerInfo{}, errf(KindNotFound, "issuer", nil, "no issuer %q", id)
}

// CreateIntermediateCSR creates an intermediate key in custody and returns
// a PEM CSR for it, for an external root to sign (ImportIntermediate then
// installs the result). Only CommonName, Organization, Country and KeyType
// of req are used.
func (a *Authority) CreateIntermediateCSR(ctx context.Context, req InitRequest) ([]byte, error) {
	const op = "intermediate csr"
	if err := req.defaults(a); err != nil {
		return nil, errf(KindBadRequest, op, err, "invalid request")
	}
	// A CA with its own root is initialised: a CSR would only leave a
	// dangling key (as `ca init` refuses, so does this). A hierarchy under
	// an external root may ask for its next intermediate this way.
	if err := a.checkNoOwnRoot(ctx); err != nil {
		return nil, err
	}
	n, err := a.nextKeyIndex(ctx)
	if err != nil {
		return nil, err
	}
	key, err := a.createKey(ctx, op, intKeyPrefix+strconv.Itoa(n), req.KeyType)
	if err != nil {
		return nil, err
	}
	signer, err := a.custody.Signer(ctx, key.Name)
	if err != nil {
		return nil, errf(KindInternal, op, err, "custody signer %q", key.Name)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: caSubject(req.CommonName, req.Organization, req.Country),
	}, signer)
	if err != nil {
		return nil, errf(KindInternal, op, err, "signing the CSR")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ImportIntermediate installs an externally signed intermediate. chainPEM
// holds the intermediate first, then any further intermediates, then the
// self-signed root. The intermediate's key must be in custody and the chain
// must verify; the root must match an already recorded root, if any.
func (a *Authority) ImportIntermediate(ctx context.Context, chainPEM []byte) (IssuerInfo, error) {
	const op = "intermediate import"
	certs, err := pemutil.ParseCertificateBundle(chainPEM)
	if err != nil {
		return IssuerInfo{}, errf(KindBadRequest, op, err, "need the intermediate and its root as PEM certificates")
	}
	if len(certs) < 2 {
		return IssuerInfo{}, errf(KindBadRequest, op, nil, "need the intermediate and its root in PEM, found %d certificates", len(certs))
	}
	inter, root := certs[0], certs[len(certs)-1]
	if !inter.IsCA || !inter.BasicConstraintsValid || inter.KeyUsage&x509.KeyUsageCertSign == 0 {
		return IssuerInfo{}, errf(KindBadRequest, op, nil, "the first certificate (%s) is not a CA certificate with keyCertSign", inter.Subject)
	}
	if err := root.CheckSignatureFrom(root); err != nil || !bytes.Equal(root.RawIssuer, root.RawSubject) {
		return IssuerInfo{}, errf(KindBadRequest, op, err, "the last certificate (%s) is not a self-signed root", root.Subject)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	mids := x509.NewCertPool()
	for _, c := range certs[1 : len(certs)-1] {
		mids.AddCert(c)
	}
	if _, err := inter.Verify(x509.VerifyOptions{Roots: roots, Intermediates: mids, CurrentTime: a.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return IssuerInfo{}, errf(KindBadRequest, op, err, "the intermediate does not chain to the root")
	}
	for _, c := range certs {
		if err := checkNotCompromised(c.PublicKey); err != nil {
			return IssuerInfo{}, errf(KindPolicyViolation, op, err, "certificate %s", c.Subject)
		}
	}
	// The key must be one custody holds.
	keys, err := a.custody.ListKeys(ctx)
	if err != nil {
		return IssuerInfo{}, errf(KindInternal, op, err, "listing custody keys")
	}
	keyName := ""
	for _, k := range keys {
		if pk, ok := k.Public.(interface{ Equal(crypto.PublicKey) bool }); ok && pk.Equal(inter.PublicKey) {
			keyName = k.Name
			break
		}
	}
	if keyName == "" {
		return IssuerInfo{}, errf(KindBadRequest, op, nil, "the intermediate's public key matches no key in custody (was the CSR made by this CA?)")
	}
	rootID, err := issuerID(root.RawSubjectPublicKeyInfo)
	if err != nil {
		return IssuerInfo{}, errf(KindBadRequest, op, err, "root key")
	}
	var newRoot *storage.Issuer
	if cur := a.rootIssuer(); cur != nil {
		if cur.rec.ID != rootID || !bytes.Equal(cur.cert.Raw, root.Raw) {
			return IssuerInfo{}, errf(KindConflict, op, nil, "the chain's root %s differs from the recorded root %s", root.Subject, cur.cert.Subject)
		}
	} else {
		newRoot = &storage.Issuer{ID: rootID, Kind: KindRoot, DER: root.Raw, CreatedAt: a.now()}
	}
	id, err := issuerID(inter.RawSubjectPublicKeyInfo)
	if err != nil {
		return IssuerInfo{}, errf(KindBadRequest, op, err, "intermediate key")
	}
	var chain [][]byte
	for _, c := range certs[1:] {
		chain = append(chain, c.Raw)
	}
	rec := &storage.Issuer{ID: id, Kind: KindIntermediate, KeyName: keyName, DER: inter.Raw, ChainDER: chain, Active: true, CreatedAt: a.now()}
	if err := a.installIntermediate(ctx, op, rec, inter, "", newRoot); err != nil {
		return IssuerInfo{}, err
	}
	return a.issuerInfo(id)
}
