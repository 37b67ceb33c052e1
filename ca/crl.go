package ca

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// RFC 5280 5.3.1 CRL reason codes.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonRemoveFromCRL        = 8
	ReasonPrivilegeWithdrawn   = 9
	ReasonAACompromise         = 10
)

// crlDebounce is how long after a revocation a shard CRL may still be
// served from cache by the background loop (Run); CRL itself regenerates a
// dirty shard on the next fetch.
const crlDebounce = time.Second

var oidIssuingDistributionPoint = asn1.ObjectIdentifier{2, 5, 29, 28}

// RFC 5280 5.2.5.
type issuingDistributionPoint struct {
	DistributionPoint     distributionPointName `asn1:"optional,tag:0"`
	OnlyContainsUserCerts bool                  `asn1:"optional,tag:1"`
	OnlyContainsCACerts   bool                  `asn1:"optional,tag:2"`
}

type distributionPointName struct {
	FullName []asn1.RawValue `asn1:"optional,tag:0"`
}

// idpExtension names the shard's URL, so a CRL fetched for one shard can
// never be taken for another's (RFC 5280 5.2.5; critical).
func idpExtension(url string, userCertsOnly bool) (pkix.Extension, error) {
	v, err := asn1.Marshal(issuingDistributionPoint{
		DistributionPoint: distributionPointName{
			FullName: []asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(url)}},
		},
		OnlyContainsUserCerts: userCertsOnly,
	})
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidIssuingDistributionPoint, Critical: true, Value: v}, nil
}

type crlKey struct {
	issuer string
	shard  int
}

type crlEntry struct {
	mu          sync.Mutex // one generation at a time per shard
	der         []byte
	thisUpdate  time.Time
	nextUpdate  time.Time
	dirty       bool
	dirtySince  time.Time
	checkedAt   time.Time // last time the entries were compared with storage
	fingerprint [32]byte  // of the entries in der
	etag        string    // HTTP entity tag of der
}

// crlRecheck bounds how long a cached CRL is served without comparing its
// entries with storage. Revocations made through this Authority mark the
// shard dirty at once; this catches those made by other instances sharing
// the database.
const crlRecheck = 30 * time.Second

type crlCache struct {
	mu      sync.Mutex
	entries map[crlKey]*crlEntry
}

func (c *crlCache) init() { c.entries = map[crlKey]*crlEntry{} }

func (c *crlCache) entry(k crlKey) *crlEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[k]
	if e == nil {
		e = &crlEntry{}
		c.entries[k] = e
	}
	return e
}

func (c *crlCache) markDirty(k crlKey, now time.Time) {
	e := c.entry(k)
	e.mu.Lock()
	if !e.dirty {
		e.dirty, e.dirtySince = true, now
	}
	e.mu.Unlock()
}

func (c *crlCache) keys() []crlKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]crlKey, 0, len(c.entries))
	for k := range c.entries {
		out = append(out, k)
	}
	return out
}

// Revoke revokes a certificate (serial in hex) with an RFC 5280 reason.
// Unknown serials fail with KindNotFound, already revoked ones with
// KindConflict (the first revocation's time and reason stand). CA
// certificates are refused with KindForbidden (ErrIssuerCertificate):
// revoking one stops a whole branch of the PKI, so only RevokeIssuer, an
// administrative operation, does it.
func (a *Authority) Revoke(ctx context.Context, serial string, reason int) error {
	const op = "revoke"
	rec, err := a.revocable(ctx, op, serial, reason)
	if err != nil {
		return err
	}
	if a.isCACert(rec) {
		return errf(KindForbidden, op, ErrIssuerCertificate,
			"certificate %s is an issuer (CA) certificate; revoke it with `sigil ca intermediate revoke` (sys/ca/hierarchy with sudo)", rec.Serial)
	}
	return a.revokeRecord(ctx, op, rec, reason)
}

// revocable checks the reason and looks the serial up.
func (a *Authority) revocable(ctx context.Context, op, serial string, reason int) (*storage.Certificate, error) {
	s, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	switch reason {
	case ReasonUnspecified, ReasonKeyCompromise, ReasonCACompromise, ReasonAffiliationChanged, ReasonSuperseded,
		ReasonCessationOfOperation, ReasonCertificateHold, ReasonPrivilegeWithdrawn, ReasonAACompromise:
	default:
		return nil, errf(KindBadRequest, op, nil, "reason %d is not an RFC 5280 revocation reason (0-6, 9, 10)", reason)
	}
	rec, err := a.store.Certificates().Get(ctx, s)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errf(KindNotFound, op, err, "no certificate with serial %s", s)
	} else if err != nil {
		return nil, errf(KindInternal, op, err, "looking up %s", s)
	}
	return rec, nil
}

// isCACert reports whether an inventory record is a CA certificate: by its
// DER (authoritative) or, should that not parse, by its profile.
func (a *Authority) isCACert(rec *storage.Certificate) bool {
	if c, err := x509.ParseCertificate(rec.DER); err == nil {
		return c.IsCA
	}
	if rec.Profile == ProfileIntermediate {
		return true
	}
	p, ok := a.profiles[rec.Profile]
	return ok && p.cfg.IsCA
}

// revokeRecord records the revocation and invalidates cached CRLs and OCSP
// responses.
func (a *Authority) revokeRecord(ctx context.Context, op string, rec *storage.Certificate, reason int) error {
	s := rec.Serial
	now := a.now()
	err := a.store.Certificates().Revoke(ctx, s, reason, now)
	switch {
	case errors.Is(err, storage.ErrConflict):
		return errf(KindConflict, op, err, "certificate %s is already revoked", s)
	case errors.Is(err, storage.ErrNotFound):
		return errf(KindNotFound, op, err, "no certificate with serial %s", s)
	case err != nil:
		return errf(KindInternal, op, err, "revoking %s", s)
	}
	a.crls.markDirty(crlKey{rec.IssuerID, rec.CRLShard}, now)
	a.ocsps.forget(rec.IssuerID, s)
	a.log.Info("ca: revoked", "serial", s, "reason", reason, "issuer", rec.IssuerID, "shard", rec.CRLShard)
	return nil
}

// CRL returns the DER CRL of one issuer's shard, served from cache unless
// a revocation made it stale or its nextUpdate is near (a third of its
// lifetime left), in which case it is regenerated with a new CRL number.
func (a *Authority) CRL(ctx context.Context, issuerID string, shard int) ([]byte, error) {
	info, err := a.CRLInfo(ctx, issuerID, shard)
	return info.DER, err
}

// CRLDocument is a served CRL with what HTTP caching needs (RFC 5019-style
// headers for CRLs): its validity window and a stable entity tag.
type CRLDocument struct {
	DER                    []byte
	ThisUpdate, NextUpdate time.Time
	// ETag changes with every newly signed CRL (a digest of the DER).
	ETag string
}

// CRLInfo is CRL with the document's validity window and entity tag.
func (a *Authority) CRLInfo(ctx context.Context, issuerID string, shard int) (CRLDocument, error) {
	const op = "crl"
	is := a.issuerByID(issuerID)
	if is == nil {
		return CRLDocument{}, errf(KindNotFound, op, nil, "no issuer %q", issuerID)
	}
	if is.rec.KeyName == "" {
		return CRLDocument{}, errf(KindNotFound, op, nil, "issuer %s is an external root: its operator publishes its CRLs", issuerID)
	}
	if shard < 0 || shard >= a.shardsOf(is) {
		return CRLDocument{}, errf(KindNotFound, op, nil, "issuer %s has no CRL shard %d", issuerID, shard)
	}
	e := a.crls.entry(crlKey{issuerID, shard})
	e.mu.Lock()
	defer e.mu.Unlock()
	now := a.now()
	if e.der != nil && !e.dirty && now.Before(e.refreshAt(a.cfg.CRLLifetime)) {
		if now.Sub(e.checkedAt) < crlRecheck {
			return e.document(), nil
		}
		entries, fp, err := a.revokedEntries(ctx, is, shard, now)
		if err != nil {
			// The cached CRL is still valid until its nextUpdate.
			a.log.Warn("ca: CRL recheck failed, serving cached CRL", "issuer", issuerID, "shard", shard, "err", err)
			return e.document(), nil
		}
		if fp == e.fingerprint {
			e.checkedAt = now
			return e.document(), nil
		}
		if err := a.signCRL(ctx, is, shard, e, entries, fp, now); err != nil {
			return CRLDocument{}, err
		}
		return e.document(), nil
	}
	if err := a.generateCRL(ctx, is, shard, e, now); err != nil {
		return CRLDocument{}, err
	}
	return e.document(), nil
}

// document is the served CRL; e.mu is held.
func (e *crlEntry) document() CRLDocument {
	return CRLDocument{DER: e.der, ThisUpdate: e.thisUpdate, NextUpdate: e.nextUpdate, ETag: e.etag}
}

func (e *crlEntry) refreshAt(lifetime time.Duration) time.Time {
	return e.nextUpdate.Add(-lifetime / 3)
}

// shardsOf: intermediates' certificates are spread over CRLShards shards;
// the root issues only CA certificates, all on shard 0.
func (a *Authority) shardsOf(is *issuer) int {
	if is.rec.Kind == KindRoot {
		return 1
	}
	return a.cfg.CRLShards
}

// generateCRL builds and signs the shard CRL; e.mu is held.
func (a *Authority) generateCRL(ctx context.Context, is *issuer, shard int, e *crlEntry, now time.Time) error {
	// Clear dirty before reading: a revocation landing during generation
	// marks it dirty again and the next fetch regenerates.
	e.dirty = false
	entries, fp, err := a.revokedEntries(ctx, is, shard, now)
	if err != nil {
		e.dirty = true
		return err
	}
	return a.signCRL(ctx, is, shard, e, entries, fp, now)
}

// revokedEntries lists the shard's revoked, unexpired certificates (RFC
// 5280 lets expired ones leave the CRL) and a fingerprint of them.
func (a *Authority) revokedEntries(ctx context.Context, is *issuer, shard int, now time.Time) ([]x509.RevocationListEntry, [32]byte, error) {
	var entries []x509.RevocationListEntry
	h := sha256.New()
	f := storage.CertFilter{IssuerID: is.rec.ID, CRLShard: &shard, RevokedOnly: true, ValidAt: now, Limit: 1000}
	for {
		list, next, err := a.store.Certificates().List(ctx, f)
		if err != nil {
			return nil, [32]byte{}, errf(KindInternal, "crl", err, "listing revoked certificates")
		}
		for _, c := range list {
			n, ok := new(big.Int).SetString(c.Serial, 16)
			if !ok {
				continue
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: c.RevokedAt, ReasonCode: c.Reason})
			fmt.Fprintf(h, "%s/%d/%d\n", c.Serial, c.Reason, c.RevokedAt.UnixMicro())
		}
		if next == "" {
			break
		}
		f.After = next
	}
	var fp [32]byte
	h.Sum(fp[:0])
	return entries, fp, nil
}

// signCRL signs a new CRL with the next CRL number; e.mu is held.
func (a *Authority) signCRL(ctx context.Context, is *issuer, shard int, e *crlEntry, entries []x509.RevocationListEntry, fp [32]byte, now time.Time) error {
	const op = "crl"
	signer, err := a.signerFor(ctx, is)
	if err != nil {
		e.dirty = true
		return err
	}
	num, err := a.store.Issuers().NextCRLNumber(ctx, is.rec.ID)
	if err != nil {
		e.dirty = true
		return errf(KindInternal, op, err, "CRL number")
	}
	idp, err := idpExtension(a.CRLURL(is.rec.ID, shard), is.rec.Kind != KindRoot)
	if err != nil {
		return errf(KindInternal, op, err, "IDP extension")
	}
	next := now.Add(a.cfg.CRLLifetime)
	if next.After(is.cert.NotAfter) {
		next = is.cert.NotAfter
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(num),
		ThisUpdate:                now,
		NextUpdate:                next,
		RevokedCertificateEntries: entries,
		ExtraExtensions:           []pkix.Extension{idp},
	}, is.cert, signer)
	if err != nil {
		e.dirty = true
		return errf(KindInternal, op, err, "signing CRL")
	}
	sum := sha256.Sum256(der)
	e.der, e.thisUpdate, e.nextUpdate, e.checkedAt, e.fingerprint = der, now, next, now, fp
	e.etag = fmt.Sprintf(`"%x"`, sum[:16])
	a.log.Debug("ca: CRL generated", "issuer", is.rec.ID, "shard", shard, "number", num, "entries", len(entries))
	return nil
}

// refreshCRLs regenerates cached shard CRLs that are dirty for longer than
// the debounce, or near their nextUpdate. Shards never fetched are not
// generated: CRL builds them on first request.
func (a *Authority) refreshCRLs(ctx context.Context) {
	for _, k := range a.crls.keys() {
		is := a.issuerByID(k.issuer)
		if is == nil {
			continue
		}
		e := a.crls.entry(k)
		e.mu.Lock()
		now := a.now()
		due := e.der != nil && (e.dirty && now.Sub(e.dirtySince) >= crlDebounce || !now.Before(e.refreshAt(a.cfg.CRLLifetime)))
		if due {
			if err := a.generateCRL(ctx, is, k.shard, e, now); err != nil {
				a.log.Warn("ca: CRL refresh failed", "issuer", k.issuer, "shard", k.shard, "err", err)
			}
		}
		e.mu.Unlock()
	}
}
