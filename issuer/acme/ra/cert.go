package ra

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/storage"
)

// Certificate is an issued certificate with the chains to serve after it:
// the default chain first, then alternates.
type Certificate struct {
	DER    []byte
	Chains [][]*x509.Certificate
}

// Certificate returns a certificate the account ordered.
func (ra *RA) Certificate(ctx context.Context, acct *Account, serial string) (*Certificate, error) {
	obj, err := ra.store.ACME().Get(ctx, kindCert, serial)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (obj.AccountID != acct.ID || obj.Provisioner != acct.prov)) {
		return nil, notFound("no certificate %q for this account", serial)
	}
	if err != nil {
		return nil, internal(err, "loading certificate record")
	}
	rec, err := ra.ca.Get(ctx, serial)
	if err != nil {
		return nil, internal(err, "loading certificate")
	}
	return &Certificate{DER: rec.DER, Chains: ra.chains(rec.IssuerID)}, nil
}

// chains returns the default chain for certificates signed by issuerID and
// then alternates: chains through other active issuer certificates with the
// same subject and key (a cross-signed or re-issued intermediate).
func (ra *RA) chains(issuerID string) [][]*x509.Certificate {
	issuers := ra.ca.Issuers()
	primary := issuerChain(issuers, issuerID)
	if len(primary) == 0 {
		return nil
	}
	out := [][]*x509.Certificate{primary}
	for _, is := range issuers {
		if is.ID == issuerID || !is.Active || is.Certificate == nil {
			continue
		}
		if bytes.Equal(is.Certificate.RawSubject, primary[0].RawSubject) &&
			bytes.Equal(is.Certificate.RawSubjectPublicKeyInfo, primary[0].RawSubjectPublicKeyInfo) {
			if c := issuerChain(issuers, is.ID); len(c) > 0 {
				out = append(out, c)
			}
		}
	}
	return out
}

// issuerChain returns the chain to serve after a leaf signed by issuerID:
// the issuer and its parents, without the self-signed root.
func issuerChain(issuers []ca.IssuerInfo, issuerID string) []*x509.Certificate {
	for _, is := range issuers {
		if is.ID == issuerID {
			return is.Served
		}
	}
	return nil
}

// revocable are the reasons a subscriber may give (RFC 5280 codes).
var revocable = []int{ca.ReasonUnspecified, ca.ReasonKeyCompromise, ca.ReasonAffiliationChanged,
	ca.ReasonSuperseded, ca.ReasonCessationOfOperation, ca.ReasonPrivilegeWithdrawn}

// RevokeRequest is a revokeCert (RFC 8555 §7.6), signed either by an
// account (Account set) or by the certificate's key (Key set).
type RevokeRequest struct {
	Account     *Account
	Key         *jose.JSONWebKey
	Certificate []byte // DER
	Reason      *int
}

// RevokeCert revokes a certificate for its subscriber.
func (ra *RA) RevokeCert(ctx context.Context, req RevokeRequest) error {
	reason := ca.ReasonUnspecified
	if req.Reason != nil {
		reason = *req.Reason
	}
	if !slices.Contains(revocable, reason) {
		return errorf(KindBadRevocationReason, "reason %d is not allowed (allowed: %v)", reason, revocable)
	}
	cert, err := x509.ParseCertificate(req.Certificate)
	if err != nil {
		return malformed("certificate does not parse")
	}
	serial := cert.SerialNumber.Text(16)
	rec, err := ra.ca.Get(ctx, serial)
	if err != nil || !bytes.Equal(rec.DER, req.Certificate) {
		return notFound("certificate was not issued by this CA")
	}
	if req.Account != nil {
		obj, err := ra.store.ACME().Get(ctx, kindCert, serial)
		if err != nil || obj.AccountID != req.Account.ID {
			return unauthorized("the account did not order this certificate")
		}
	} else {
		pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || req.Key == nil || !pub.Equal(req.Key.Key) {
			return unauthorized("the JWS is not signed by the certificate's key")
		}
	}
	if rec.Status == storage.CertRevoked {
		return errorf(KindAlreadyRevoked, "certificate is already revoked")
	}
	if err := ra.ca.Revoke(ctx, serial, reason); err != nil {
		switch ca.KindOf(err) {
		case ca.KindConflict:
			return errorf(KindAlreadyRevoked, "certificate is already revoked")
		case ca.KindForbidden:
			// A CA certificate: revoked only through the hierarchy.
			e := unauthorized("this certificate cannot be revoked through ACME: %v", err)
			e.cause = err
			return e
		case ca.KindNotFound:
			return notFound("certificate was not issued by this CA")
		}
		return internal(err, "revoking")
	}
	ra.logger.InfoContext(ctx, "acme: certificate revoked", "serial", serial, "reason", reason)
	return nil
}

// RenewalInfo is an RFC 9773 suggested renewal window.
type RenewalInfo struct {
	Start, End time.Time
}

// RenewalInfo answers renewalInfo for an RFC 9773 certID.
func (ra *RA) RenewalInfo(ctx context.Context, certID string) (*RenewalInfo, error) {
	aki, serial, err := parseCertID(certID)
	if err != nil {
		return nil, malformed("%v", err)
	}
	rec, err := ra.ca.Get(ctx, serial)
	if err != nil {
		return nil, notFound("no certificate %s", serial)
	}
	cert, err := x509.ParseCertificate(rec.DER)
	if err != nil || !bytes.Equal(cert.AuthorityKeyId, aki) {
		return nil, notFound("no certificate %s from that issuer", serial)
	}
	start, end := renewalWindow(cert.NotBefore, cert.NotAfter, rec.Status == storage.CertRevoked, ra.cfg.Now())
	return &RenewalInfo{Start: start, End: end}, nil
}

// renewalWindow suggests renewing between 2/3 and 5/6 of the lifetime; for
// a revoked certificate, a window already past (renew now).
func renewalWindow(notBefore, notAfter time.Time, revoked bool, now time.Time) (time.Time, time.Time) {
	if revoked {
		return now.Add(-time.Hour).UTC().Truncate(time.Second), now.UTC().Truncate(time.Second)
	}
	life := notAfter.Sub(notBefore)
	start := notBefore.Add(life * 2 / 3)
	end := notBefore.Add(life * 5 / 6)
	return start.UTC().Truncate(time.Second), end.UTC().Truncate(time.Second)
}

// CertID returns the RFC 9773 certID of a certificate.
func CertID(cert *x509.Certificate) string {
	sb := cert.SerialNumber.Bytes()
	if len(sb) == 0 || sb[0]&0x80 != 0 {
		sb = append([]byte{0}, sb...) // DER INTEGER encoding of a positive serial
	}
	return base64.RawURLEncoding.EncodeToString(cert.AuthorityKeyId) + "." + base64.RawURLEncoding.EncodeToString(sb)
}

// parseCertID splits an RFC 9773 certID into the AKI and the serial (hex).
func parseCertID(id string) (aki []byte, serial string, err error) {
	a, b, ok := strings.Cut(id, ".")
	if !ok {
		return nil, "", errors.New("certID must be base64url(AKI).base64url(serial)")
	}
	aki, err = base64.RawURLEncoding.DecodeString(a)
	if err != nil || len(aki) == 0 {
		return nil, "", errors.New("certID: bad authority key identifier")
	}
	sb, err := base64.RawURLEncoding.DecodeString(b)
	if err != nil || len(sb) == 0 || len(sb) > 20 {
		return nil, "", errors.New("certID: bad serial")
	}
	serial, err = ca.ParseSerial(fmt.Sprintf("%x", sb))
	if err != nil {
		return nil, "", fmt.Errorf("certID: %w", err)
	}
	return aki, serial, nil
}

func (ra *RA) checkReplaces(ctx context.Context, acct *Account, certID string) error {
	_, serial, err := parseCertID(certID)
	if err != nil {
		return malformed("replaces: %v", err)
	}
	o, err := ra.store.ACME().Get(ctx, kindCert, serial)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && o.AccountID != acct.ID) {
		return unauthorized("replaces: certificate %s was not issued to this account", serial)
	}
	if err != nil {
		return internal(err, "loading certificate record")
	}
	rec, err := decode[certRecord](o)
	if err != nil {
		return internal(err, "decoding certificate record")
	}
	if rec.ReplacedBy != "" {
		return errorf(KindAlreadyReplaced, "certificate %s was already replaced by order %s", serial, rec.ReplacedBy)
	}
	return nil
}
