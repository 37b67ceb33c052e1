package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1): relying parties do not check
// the responder certificate's revocation, so it needs no CDP or AIA.
var oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

// ocspCacheCap bounds the response cache; past it, the cache is dropped
// (a cache miss costs one signature, never correctness).
const ocspCacheCap = 100000

type responder struct {
	cert      *x509.Certificate
	signer    crypto.Signer
	refreshAt time.Time
}

type ocspCacheKey struct {
	issuer, serial string
}

type ocspCached struct {
	der       []byte
	staleAt   time.Time
	checkedAt time.Time          // last time the status was compared with storage
	status    storage.CertStatus // the status der asserts
	result    string             // status as an OCSP result name
	// thisUpdate and nextUpdate are der's, for HTTP caching headers.
	thisUpdate, nextUpdate time.Time
}

func (c ocspCached) response() OCSPResponse {
	return OCSPResponse{DER: c.der, Result: c.result, ThisUpdate: c.thisUpdate, NextUpdate: c.nextUpdate}
}

// ocspRecheck bounds how long a cached response is served without
// re-reading the certificate's status (one indexed read, no signature):
// revocations through this Authority evict at once, this catches those
// made by other instances sharing the database.
const ocspRecheck = 30 * time.Second

type ocspState struct {
	respMu     sync.Mutex // serialises responder creation
	responders map[string]*responder

	cacheMu sync.Mutex
	cache   map[ocspCacheKey]ocspCached
	// gen counts forgets (revocations here): a response built from a
	// status read before a revocation is never cached after it.
	gen uint64
}

func (o *ocspState) init() {
	o.responders = map[string]*responder{}
	o.cache = map[ocspCacheKey]ocspCached{}
}

func (o *ocspState) forget(issuerID, serial string) {
	o.cacheMu.Lock()
	o.gen++
	delete(o.cache, ocspCacheKey{issuerID, serial})
	o.cacheMu.Unlock()
}

// get returns the cached response for k, if fresh, and the generation to
// pass to put.
func (o *ocspState) get(k ocspCacheKey, now time.Time) (ocspCached, bool, uint64) {
	o.cacheMu.Lock()
	defer o.cacheMu.Unlock()
	c, ok := o.cache[k]
	if !ok || !now.Before(c.staleAt) {
		return ocspCached{}, false, o.gen
	}
	return c, true, o.gen
}

// put caches c, built from a status read at generation gen, unless a
// revocation here was forgotten since.
func (o *ocspState) put(k ocspCacheKey, c ocspCached, gen uint64) {
	o.cacheMu.Lock()
	defer o.cacheMu.Unlock()
	if gen != o.gen {
		return
	}
	if len(o.cache) >= ocspCacheCap {
		clear(o.cache)
	}
	o.cache[k] = c
}

func (o *ocspState) touch(k ocspCacheKey, now time.Time) {
	o.cacheMu.Lock()
	defer o.cacheMu.Unlock()
	if c, ok := o.cache[k]; ok {
		c.checkedAt = now
		o.cache[k] = c
	}
}

// OCSP answers a DER OCSP request (RFC 6960, RFC 5019 profile: cached
// responses; a request nonce is echoed, RFC 8954). It always returns a DER
// OCSP response for the client: a malformed request gets malformedRequest,
// a certificate of an issuer this CA does not have gets unauthorized, a
// serial this issuer never issued gets "unknown". An error is returned only
// for internal failures; the front end should then send
// ocsp.InternalErrorErrorResponse.
func (a *Authority) OCSP(ctx context.Context, reqDER []byte) ([]byte, error) {
	ans, err := a.OCSPAnswer(ctx, reqDER)
	return ans.DER, err
}

// OCSP results, as counted by the front end.
const (
	OCSPGood         = "good"
	OCSPRevoked      = "revoked"
	OCSPUnknown      = "unknown"
	OCSPMalformed    = "malformed"
	OCSPUnauthorized = "unauthorized"
)

// OCSPResponse is an OCSP answer with what HTTP caching (RFC 5019 6.2) and
// metrics need.
type OCSPResponse struct {
	DER []byte
	// Result is one of the OCSP* result names.
	Result string
	// ThisUpdate and NextUpdate are zero for an error response.
	ThisUpdate, NextUpdate time.Time
	// Nonce: the response echoes the request's nonce, so it is unique and
	// must not be cached.
	Nonce bool
}

// oidOCSPNonce is id-pkix-ocsp-nonce (RFC 8954).
var oidOCSPNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}

// maxOCSPNonce is RFC 8954's upper bound on a nonce's length.
const maxOCSPNonce = 32

// ocspRequestASN1 is just enough of RFC 6960 4.1.1 to read the request
// extensions, which golang.org/x/crypto/ocsp does not expose.
type ocspRequestASN1 struct {
	TBS struct {
		Version       int           `asn1:"optional,explicit,tag:0,default:0"`
		RequestorName asn1.RawValue `asn1:"optional,explicit,tag:1"`
		RequestList   []asn1.RawValue
		Extensions    []pkix.Extension `asn1:"optional,explicit,tag:2"`
	}
	Signature asn1.RawValue `asn1:"optional,explicit,tag:0"`
}

// requestNonce returns the request's nonce extension, if any; ok is false
// when the nonce is empty or longer than RFC 8954 allows.
func requestNonce(reqDER []byte) (ext *pkix.Extension, ok bool) {
	var r ocspRequestASN1
	if rest, err := asn1.Unmarshal(reqDER, &r); err != nil || len(rest) > 0 {
		return nil, true // ocsp.ParseRequest has accepted it: no nonce to echo
	}
	for i := range r.TBS.Extensions {
		e := &r.TBS.Extensions[i]
		if !e.Id.Equal(oidOCSPNonce) {
			continue
		}
		// The value is an OCTET STRING holding the nonce (RFC 8954 2.1).
		var n []byte
		if rest, err := asn1.Unmarshal(e.Value, &n); err != nil || len(rest) > 0 || len(n) == 0 || len(n) > maxOCSPNonce {
			return nil, false
		}
		return &pkix.Extension{Id: oidOCSPNonce, Value: e.Value}, true
	}
	return nil, true
}

// OCSPAnswer is OCSP with the response's result and validity window.
func (a *Authority) OCSPAnswer(ctx context.Context, reqDER []byte) (OCSPResponse, error) {
	const op = "ocsp"
	malformed := OCSPResponse{DER: ocsp.MalformedRequestErrorResponse, Result: OCSPMalformed}
	if len(reqDER) > 4096 {
		return malformed, nil
	}
	req, err := ocsp.ParseRequest(reqDER)
	if err != nil {
		return malformed, nil
	}
	nonce, ok := requestNonce(reqDER)
	if !ok {
		return malformed, nil
	}
	is := a.issuerByKeyHash(req.HashAlgorithm, req.IssuerKeyHash, req.IssuerNameHash)
	if is == nil || is.rec.KeyName == "" {
		// Not ours, or an external root whose operator answers for it.
		return OCSPResponse{DER: ocsp.UnauthorizedErrorResponse, Result: OCSPUnauthorized}, nil
	}
	if req.SerialNumber == nil || req.SerialNumber.Sign() <= 0 {
		return malformed, nil
	}
	serial := serialHex(req.SerialNumber)
	key := ocspCacheKey{is.rec.ID, serial}
	now := a.now()
	// A response with a nonce is unique to its request: never from or
	// into the cache.
	cacheable := req.HashAlgorithm == crypto.SHA1 && nonce == nil
	cached, hit, gen := a.ocsps.get(key, now)
	hit = hit && cacheable
	if hit && now.Sub(cached.checkedAt) < ocspRecheck {
		return cached.response(), nil
	}
	rec, err := a.store.Certificates().Get(ctx, serial)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return OCSPResponse{}, errf(KindInternal, op, err, "looking up %s", serial)
	}
	if hit && rec != nil && rec.Status == cached.status {
		a.ocsps.touch(key, now)
		return cached.response(), nil
	}
	tmpl := ocsp.Response{
		Status:       ocsp.Unknown,
		SerialNumber: req.SerialNumber,
		ThisUpdate:   now,
		NextUpdate:   now.Add(a.cfg.OCSPLifetime),
		IssuerHash:   req.HashAlgorithm,
	}
	result := OCSPUnknown
	known := rec != nil && rec.IssuerID == is.rec.ID
	if known {
		tmpl.Status, result = ocsp.Good, OCSPGood
		if rec.Status == storage.CertRevoked {
			tmpl.Status, result = ocsp.Revoked, OCSPRevoked
			tmpl.RevokedAt = rec.RevokedAt
			tmpl.RevocationReason = rec.Reason
		}
	}
	r, err := a.responderFor(ctx, is)
	if err != nil {
		return OCSPResponse{}, err
	}
	if tmpl.NextUpdate.After(r.cert.NotAfter) {
		tmpl.NextUpdate = r.cert.NotAfter
	}
	tmpl.Certificate = r.cert
	var der []byte
	if nonce == nil {
		der, err = ocsp.CreateResponse(is.cert, r.cert, tmpl, r.signer)
	} else {
		der, err = createResponseWithExtensions(is.cert, r.cert, tmpl, r.signer, []pkix.Extension{*nonce})
	}
	if err != nil {
		return OCSPResponse{}, errf(KindInternal, op, err, "signing OCSP response")
	}
	// Only known certificates are cached: unknown serials would let a
	// client fill the cache. Only SHA-1 CertIDs are cached, since the
	// response echoes the request's hash algorithm.
	if known && cacheable {
		life := tmpl.NextUpdate.Sub(now)
		a.ocsps.put(key, ocspCached{der: der, staleAt: tmpl.NextUpdate.Add(-life / 10), checkedAt: now, status: rec.Status,
			result: result, thisUpdate: tmpl.ThisUpdate, nextUpdate: tmpl.NextUpdate}, gen)
	}
	return OCSPResponse{DER: der, Result: result, ThisUpdate: tmpl.ThisUpdate, NextUpdate: tmpl.NextUpdate, Nonce: nonce != nil}, nil
}

// The BasicOCSPResponse of RFC 6960 4.2.1, to add responseExtensions:
// golang.org/x/crypto/ocsp puts its ExtraExtensions in the
// singleExtensions, where clients do not look for a nonce (RFC 8954 2.1
// puts it in responseExtensions).
type ocspResponseASN1 struct {
	Status asn1.Enumerated
	Bytes  struct {
		Type     asn1.ObjectIdentifier
		Response []byte
	} `asn1:"explicit,tag:0,optional"`
}

type ocspBasicASN1 struct {
	TBS          ocspTBSASN1
	Algorithm    pkix.AlgorithmIdentifier
	Signature    asn1.BitString
	Certificates []asn1.RawValue `asn1:"explicit,tag:0,optional"`
}

type ocspTBSASN1 struct {
	Version     int `asn1:"optional,default:0,explicit,tag:0"`
	ResponderID asn1.RawValue
	ProducedAt  time.Time `asn1:"generalized"`
	Responses   []asn1.RawValue
	Extensions  []pkix.Extension `asn1:"optional,explicit,tag:1"`
}

// unsignedSigner stands in for the responder key while x/crypto/ocsp
// builds a response that is then re-signed with extensions added, so the
// real key signs once. It records the hash the real signature needs.
type unsignedSigner struct {
	pub  crypto.PublicKey
	hash crypto.Hash
}

func (u *unsignedSigner) Public() crypto.PublicKey { return u.pub }

func (u *unsignedSigner) Sign(_ io.Reader, _ []byte, opts crypto.SignerOpts) ([]byte, error) {
	u.hash = opts.HashFunc()
	return []byte{0}, nil
}

// createResponseWithExtensions is ocsp.CreateResponse with
// responseExtensions.
func createResponseWithExtensions(issuer, responderCert *x509.Certificate, tmpl ocsp.Response, signer crypto.Signer, exts []pkix.Extension) ([]byte, error) {
	stand := &unsignedSigner{pub: signer.Public()}
	der, err := ocsp.CreateResponse(issuer, responderCert, tmpl, stand)
	if err != nil {
		return nil, err
	}
	var outer ocspResponseASN1
	if _, err := asn1.Unmarshal(der, &outer); err != nil {
		return nil, fmt.Errorf("re-reading the OCSP response: %w", err)
	}
	var basic ocspBasicASN1
	if _, err := asn1.Unmarshal(outer.Bytes.Response, &basic); err != nil {
		return nil, fmt.Errorf("re-reading the basic OCSP response: %w", err)
	}
	basic.TBS.Extensions = exts
	tbs, err := asn1.Marshal(basic.TBS)
	if err != nil {
		return nil, err
	}
	h := stand.hash.New()
	h.Write(tbs)
	sig, err := signer.Sign(rand.Reader, h.Sum(nil), stand.hash)
	if err != nil {
		return nil, err
	}
	basic.Signature = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	if outer.Bytes.Response, err = asn1.Marshal(basic); err != nil {
		return nil, err
	}
	return asn1.Marshal(outer)
}

// issuerByKeyHash finds the issuer an OCSP CertID names.
func (a *Authority) issuerByKeyHash(h crypto.Hash, keyHash, nameHash []byte) *issuer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, is := range a.issuers {
		var kh, nh []byte
		switch h {
		case crypto.SHA1:
			kh = is.keyHashSHA1
			s := sha1.Sum(is.cert.RawSubject)
			nh = s[:]
		case crypto.SHA256:
			kh = is.keyHashSHA256
			s := sha256.Sum256(is.cert.RawSubject)
			nh = s[:]
		default:
			return nil
		}
		if bytes.Equal(kh, keyHash) && bytes.Equal(nh, nameHash) {
			return is
		}
	}
	return nil
}

// responderFor returns the issuer's delegated OCSP responder, issuing (or
// re-issuing, once it nears expiry) its certificate. The responder key
// stays in custody as ca-ocsp-<issuer id prefix>; the certificate is
// recorded in the inventory like any other.
func (a *Authority) responderFor(ctx context.Context, is *issuer) (*responder, error) {
	const op = "ocsp"
	a.ocsps.respMu.Lock()
	defer a.ocsps.respMu.Unlock()
	now := a.now()
	if r := a.ocsps.responders[is.rec.ID]; r != nil && now.Before(r.refreshAt) {
		return r, nil
	}
	name := ocspKeyPrefix + is.rec.ID[:16]
	if _, err := a.custody.Key(ctx, name); errors.Is(err, hsm.ErrKeyNotFound) {
		if _, err := a.custody.CreateKey(ctx, name, a.cfg.KeyType); err != nil && !errors.Is(err, hsm.ErrKeyExists) {
			return nil, errf(KindInternal, op, err, "creating OCSP responder key %q", name)
		}
	} else if err != nil {
		return nil, errf(KindInternal, op, err, "OCSP responder key %q", name)
	}
	signer, err := a.custody.Signer(ctx, name)
	if err != nil {
		return nil, errf(KindInternal, op, err, "OCSP responder key %q", name)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, errf(KindInternal, op, err, "serial")
	}
	ski, err := subjectKeyID(signer.Public())
	if err != nil {
		return nil, errf(KindInternal, op, err, "responder key")
	}
	notAfter := now.Add(a.cfg.OCSPSignerTTL)
	if notAfter.After(is.cert.NotAfter) {
		notAfter = is.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: is.cert.Subject.CommonName + " OCSP Responder", Organization: is.cert.Subject.Organization, Country: is.cert.Subject.Country},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		BasicConstraintsValid: true,
		SubjectKeyId:          ski,
		AuthorityKeyId:        is.cert.SubjectKeyId,
		ExtraExtensions:       []pkix.Extension{{Id: oidOCSPNoCheck, Value: asn1.NullBytes}},
	}
	issued, err := a.issue(ctx, a.profiles[profileOCSPSigner], is, tmpl, signer.Public(), "sigil:ocsp", recordHooks{})
	if err != nil {
		return nil, err
	}
	ttl := notAfter.Sub(now)
	// Re-issue while a full response lifetime plus a margin remains, so no
	// response outlives its responder certificate.
	r := &responder{cert: issued.Certificate, signer: signer, refreshAt: notAfter.Add(-a.cfg.OCSPLifetime - ttl/4)}
	a.ocsps.responders[is.rec.ID] = r
	a.log.Info("ca: OCSP responder certificate issued", "issuer", is.rec.ID, "serial", issued.Record.Serial, "not_after", notAfter)
	return r, nil
}
