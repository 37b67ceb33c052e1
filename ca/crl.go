package ca

import (
	"bytes"
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

// crlDebounce is how often the CRL singleton (Run) regenerates stored
// CRLs that a revocation made stale; CRLInfo itself regenerates a stale
// shard on the next fetch, on any node.
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

// crlEntry is this node's copy of a shard's stored CRL, keyed by its CRL
// number: every fetch reads the stored number (one primary-key read) and
// serves this copy only while it is the stored one, so a node never serves
// an older CRL than the database holds.
type crlEntry struct {
	gen    sync.Mutex // one generation at a time per shard on this node
	mu     sync.Mutex // guards number and doc
	number int64
	doc    CRLDocument
}

// crlRecheck is how often the CRL singleton compares each stored CRL's
// revoked set with the inventory: revocations are counted in the stored
// row in the same transaction (storage.CRLs.Touch), so this only catches
// revocations written without it (a node of an older version during a
// rolling upgrade).
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

// cached returns the copy if it is CRL number n.
func (e *crlEntry) cached(n int64) (CRLDocument, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.doc, e.number == n && n > 0
}

// keep caches a stored CRL unless a newer one is cached already.
func (e *crlEntry) keep(c *storage.CRL) CRLDocument {
	doc := crlDocument(c)
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.Number >= e.number {
		e.number, e.doc = c.Number, doc
	}
	return doc
}

func crlDocument(c *storage.CRL) CRLDocument {
	sum := sha256.Sum256(c.DER)
	return CRLDocument{DER: c.DER, ThisUpdate: c.ThisUpdate, NextUpdate: c.NextUpdate, ETag: fmt.Sprintf(`"%x"`, sum[:16])}
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
	// The shard's stored CRL counts the revocation in the same
	// transaction, so no node can serve it as current once this commits.
	err := a.store.InTx(ctx, func(tx storage.Repos) error {
		if err := tx.Certificates().Revoke(ctx, s, reason, now); err != nil {
			return err
		}
		return tx.CRLs().Touch(ctx, rec.IssuerID, rec.CRLShard)
	})
	switch {
	case errors.Is(err, storage.ErrConflict):
		return errf(KindConflict, op, err, "certificate %s is already revoked", s)
	case errors.Is(err, storage.ErrNotFound):
		return errf(KindNotFound, op, err, "no certificate with serial %s", s)
	case err != nil:
		return errf(KindInternal, op, err, "revoking %s", s)
	}
	a.ocsps.forget(rec.IssuerID, s)
	a.log.Info("ca: revoked", "serial", s, "reason", reason, "issuer", rec.IssuerID, "shard", rec.CRLShard)
	return nil
}

// CRL returns the DER CRL of one issuer's shard: the latest stored one,
// regenerated with a new CRL number first if a revocation made it stale or
// its nextUpdate is near (a third of its lifetime left).
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
//
// Every node of a cluster serves the shard's CRL stored in the database
// (issue 18). Each call reads the stored CRL number and revision count (a
// primary-key read, no DER unless this node's copy is older), so:
//   - a revocation committed on any node is in every CRL served by any
//     node from then on (its transaction marks the stored CRL stale, and a
//     stale CRL is regenerated before it is served): the bound is the
//     regeneration itself, not a cache lifetime;
//   - CRL numbers served by the nodes never decrease, whichever node a
//     client asks: each serves at least the number stored when it was asked.
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
	head, err := a.store.CRLs().Head(ctx, issuerID, shard)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return CRLDocument{}, errf(KindInternal, op, err, "reading the stored CRL of %s shard %d", issuerID, shard)
	}
	now := a.now()
	if head != nil && a.crlCurrent(head, now) {
		if doc, ok := e.cached(head.Number); ok {
			return doc, nil
		}
		c, err := a.store.CRLs().Get(ctx, issuerID, shard)
		if err != nil {
			return CRLDocument{}, errf(KindInternal, op, err, "reading the stored CRL of %s shard %d", issuerID, shard)
		}
		return e.keep(c), nil
	}
	c, err := a.generateCRL(ctx, is, shard, e, false)
	if err != nil {
		return CRLDocument{}, err
	}
	return e.keep(c), nil
}

// crlCurrent reports whether a stored CRL may be served as is: signed,
// built from every recorded revocation and not near its nextUpdate.
func (a *Authority) crlCurrent(c *storage.CRL, now time.Time) bool {
	return !c.Stale() && now.Before(c.NextUpdate.Add(-a.cfg.CRLLifetime/3))
}

// shardsOf: intermediates' certificates are spread over CRLShards shards;
// the root issues only CA certificates, all on shard 0.
func (a *Authority) shardsOf(is *issuer) int {
	if is.rec.Kind == KindRoot {
		return 1
	}
	return a.cfg.CRLShards
}

// errCRLCurrent rolls back a generation that found the stored CRL current.
var errCRLCurrent = errors.New("stored CRL is current")

// generateCRL signs a new CRL of the shard and stores it, unless the
// stored one turns out current (another generator, here or on another
// node, got there first) and force is false; force also accepts a current
// CRL whose revoked set still matches the inventory. It returns the stored
// CRL with its DER.
//
// The CRL number is allocated from the issuer's row in the transaction
// that stores the CRL: on PostgreSQL that row stays locked until commit,
// so generators of one issuer run one at a time across the cluster and
// store their numbers in order; SQLite serialises the transaction anyway.
func (a *Authority) generateCRL(ctx context.Context, is *issuer, shard int, e *crlEntry, force bool) (*storage.CRL, error) {
	const op = "crl"
	e.gen.Lock()
	defer e.gen.Unlock()
	// Custody is not storage: fetch the signer before the transaction
	// (SQLite's holds the write lock).
	signer, err := a.signerFor(ctx, is)
	if err != nil {
		return nil, err
	}
	idp, err := idpExtension(a.CRLURL(is.rec.ID, shard), is.rec.Kind != KindRoot)
	if err != nil {
		return nil, errf(KindInternal, op, err, "IDP extension")
	}
	var out *storage.CRL
	err = a.store.InTx(ctx, func(tx storage.Repos) error {
		num, err := tx.Issuers().NextCRLNumber(ctx, is.rec.ID)
		if err != nil {
			return errf(KindInternal, op, err, "CRL number")
		}
		now := a.now()
		head, err := tx.CRLs().Head(ctx, is.rec.ID, shard)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			head = &storage.CRL{}
		case err != nil:
			return errf(KindInternal, op, err, "reading the stored CRL")
		}
		current := a.crlCurrent(head, now)
		if current && !force {
			return errCRLCurrent
		}
		// Read the revision before the entries: a revocation committed
		// between the two reads is listed and still marks this CRL stale,
		// never the reverse.
		entries, fp, err := a.revokedEntries(ctx, tx.Certificates(), is, shard, now)
		if err != nil {
			return err
		}
		if current && bytes.Equal(fp, head.Fingerprint) {
			return errCRLCurrent
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
			return errf(KindInternal, op, err, "signing CRL")
		}
		c := &storage.CRL{IssuerID: is.rec.ID, Shard: shard, Number: num, ThisUpdate: now, NextUpdate: next,
			DER: der, Fingerprint: fp, Built: head.Revision}
		if err := tx.CRLs().Put(ctx, c); err != nil {
			return errf(KindInternal, op, err, "storing CRL %d", num)
		}
		out = c
		a.log.Debug("ca: CRL generated", "issuer", is.rec.ID, "shard", shard, "number", num, "entries", len(entries))
		return nil
	})
	if errors.Is(err, errCRLCurrent) {
		c, err := a.store.CRLs().Get(ctx, is.rec.ID, shard)
		if err != nil {
			return nil, errf(KindInternal, op, err, "reading the stored CRL")
		}
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// revokedEntries lists the shard's revoked, unexpired certificates (RFC
// 5280 lets expired ones leave the CRL) and a fingerprint of them.
func (a *Authority) revokedEntries(ctx context.Context, certs storage.Certificates, is *issuer, shard int, now time.Time) ([]x509.RevocationListEntry, []byte, error) {
	var entries []x509.RevocationListEntry
	h := sha256.New()
	f := storage.CertFilter{IssuerID: is.rec.ID, CRLShard: &shard, RevokedOnly: true, ValidAt: now, Limit: 1000}
	for {
		list, next, err := certs.List(ctx, f)
		if err != nil {
			return nil, nil, errf(KindInternal, "crl", err, "listing revoked certificates")
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
	return entries, h.Sum(nil), nil
}

// refreshCRLs regenerates stored shard CRLs that are stale (a revocation)
// or near their nextUpdate and, when recheck is set, those whose revoked
// set no longer matches the inventory. Shards never fetched are not
// generated: CRLInfo builds them on first request. It runs on one node of
// a cluster at a time (the ca-crl singleton).
func (a *Authority) refreshCRLs(ctx context.Context, recheck bool) {
	heads, err := a.store.CRLs().List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("ca: CRL refresh: listing stored CRLs failed", "err", err)
		}
		return
	}
	now := a.now()
	for _, h := range heads {
		is := a.issuerByID(h.IssuerID)
		if h.Number == 0 || is == nil || is.rec.KeyName == "" || h.Shard >= a.shardsOf(is) {
			continue
		}
		current := a.crlCurrent(h, now)
		if current && !recheck {
			continue
		}
		e := a.crls.entry(crlKey{h.IssuerID, h.Shard})
		c, err := a.generateCRL(ctx, is, h.Shard, e, current)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("ca: CRL refresh failed", "issuer", h.IssuerID, "shard", h.Shard, "err", err)
			}
			continue
		}
		e.keep(c)
	}
}
