package acme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// csrNames returns the CSR's identifiers in order form, sorted, or why the
// CSR cannot be issued as requested.
func csrNames(csr *x509.CertificateRequest) ([]string, error) {
	if len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, errors.New("CSR may only contain DNS names and IP addresses")
	}
	set := map[string]bool{}
	for _, d := range csr.DNSNames {
		set["dns:"+strings.ToLower(strings.TrimSuffix(d, "."))] = true
	}
	for _, ip := range csr.IPAddresses {
		set["ip:"+ip.String()] = true
	}
	if cn := csr.Subject.CommonName; cn != "" {
		k := "dns:" + strings.ToLower(cn)
		if ip := net.ParseIP(cn); ip != nil {
			k = "ip:" + ip.String()
		}
		if !set[k] {
			return nil, fmt.Errorf("CSR common name %q is not among its subject alternative names", cn)
		}
	}
	return sortedKeys(set), nil
}

func orderNames(o *order) []string {
	out := make([]string, 0, len(o.Identifiers))
	for _, id := range o.Identifiers {
		out = append(out, id.key())
	}
	sort.Strings(out)
	return out
}

func caNames(n ca.Names) []string {
	set := map[string]bool{}
	for _, d := range n.DNSNames {
		set["dns:"+d] = true
	}
	for _, ip := range n.IPs {
		set["ip:"+ip.String()] = true
	}
	return sortedKeys(set)
}

func (s *Server) finalize(rc *reqCtx, req *request, id string) error {
	ctx := rc.r.Context()
	o, obj, err := s.loadOrder(rc, req, id)
	if err != nil {
		return err
	}
	var pl struct {
		CSR string `json:"csr"`
	}
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("finalize needs a CSR")
		}
		return err
	}
	st, err := s.orderStatus(ctx, o)
	if err != nil {
		return internal(err, "computing order status")
	}
	if st != statusReady {
		return prob(http.StatusForbidden, "orderNotReady", "order is %s, not ready", st)
	}
	der, err := base64.RawURLEncoding.DecodeString(pl.CSR)
	if err != nil {
		return prob(http.StatusBadRequest, "badCSR", "csr is not base64url DER")
	}
	csr, err := ca.ParseCSR(der)
	if err != nil {
		return prob(http.StatusBadRequest, "badCSR", "%v", err)
	}
	got, err := csrNames(csr)
	if err != nil {
		return prob(http.StatusBadRequest, "badCSR", "%v", err)
	}
	want := orderNames(o)
	if !slices.Equal(got, want) {
		return prob(http.StatusBadRequest, "badCSR", "CSR names %v do not equal the order's identifiers %v", got, want)
	}
	if tp, err := thumbprint(&jose.JSONWebKey{Key: csr.PublicKey}); err == nil && tp == req.accountO.LookupKey {
		return prob(http.StatusBadRequest, "badCSR", "the certificate key must not be the account key")
	}
	if p, err := s.recheckCAA(ctx, o); err != nil {
		return internal(err, "rechecking CAA")
	} else if p != nil {
		o.Status, o.Error = statusInvalid, p
		if err := s.saveOrder(ctx, o, obj); err != nil && !errors.Is(err, storage.ErrConflict) {
			s.logger.ErrorContext(ctx, "acme: marking order invalid", "order", o.ID, "error", err)
		}
		return p
	}
	// Claim the order: of concurrent finalizes exactly one moves it from
	// pending to processing; the others see the version change.
	o.Status = statusProcessing
	if err := s.saveOrder(ctx, o, obj); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return prob(http.StatusForbidden, "orderNotReady", "order is already being finalized")
		}
		return internal(err, "claiming order")
	}
	prof := rc.prov.Profiles[o.Profile]
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.SignTimeout)
	defer cancel()
	issued, serr := s.ca.Sign(sctx, ca.SignRequest{
		CSR: der, Profile: prof.CAProfile, TTL: prof.TTL,
		Requester: "acme:" + rc.prov.Name + ":" + req.account.ID,
		Authorize: func(n ca.Names) error {
			if got := caNames(n); !slices.Equal(got, want) {
				return fmt.Errorf("names %v are not the order's %v", got, want)
			}
			return nil
		},
	})
	if serr != nil {
		p := signProblem(serr)
		o.Status, o.Error = statusInvalid, p
		if err := s.saveOrder(sctx, o, obj); err != nil {
			s.logger.ErrorContext(ctx, "acme: marking order invalid", "order", o.ID, "error", err)
		}
		return p
	}
	serial := issued.Record.Serial
	o.Status, o.CertSerial = statusValid, serial
	err = s.store.InTx(sctx, func(tx storage.Repos) error {
		if err := putObj(sctx, tx.ACME(), kindCert, serial, rc.prov.Name, req.account.ID, o.ID, statusValid,
			issued.Certificate.NotAfter, &certRecord{Serial: serial, OrderID: o.ID}); err != nil {
			return err
		}
		return s.saveOrderIn(sctx, tx.ACME(), o, obj)
	})
	if err != nil {
		return internal(err, "recording issued certificate %s", serial)
	}
	if o.Replaces != "" {
		if err := s.markReplaced(sctx, o); err != nil {
			s.logger.ErrorContext(ctx, "acme: marking certificate replaced", "order", o.ID, "error", err)
		}
	}
	s.logger.InfoContext(ctx, "acme: certificate issued", "provisioner", rc.prov.Name, "account", req.account.ID,
		"order", o.ID, "serial", serial)
	view, err := s.orderView(ctx, rc, o)
	if err != nil {
		return err
	}
	rc.w.Header().Set("Location", rc.url("order", o.ID))
	s.reply(rc, http.StatusOK, view)
	return nil
}

// caaChecker rechecks CAA (*validation.VA has it).
type caaChecker interface {
	CheckCAA(ctx context.Context, req validation.Request) error
}

// recheckCAA checks CAA again for each of the order's authorizations that
// was validated more than CAARecheckAge ago (authorizations are reused for
// AuthzLifetime, far longer), as Boulder does: a domain owner's CAA change
// takes effect on the next issuance, not a month later.
func (s *Server) recheckCAA(ctx context.Context, o *order) (*Problem, error) {
	cc, ok := s.va.(caaChecker)
	if !ok {
		return nil, nil
	}
	now := s.cfg.Now()
	for _, id := range o.AuthzIDs {
		obj, err := s.store.ACME().Get(ctx, kindAuthz, id)
		if err != nil {
			return nil, err
		}
		az, err := decode[authorization](obj)
		if err != nil {
			return nil, err
		}
		if az.Identifier.Type != validation.IdentifierDNS {
			continue // IP addresses have no CAA
		}
		var validated time.Time
		for _, c := range az.Challenges {
			if c.Status == statusValid && c.Validated != nil && c.Validated.After(validated) {
				validated = *c.Validated
			}
		}
		if !validated.IsZero() && now.Sub(validated) <= s.cfg.CAARecheckAge {
			continue
		}
		err = cc.CheckCAA(ctx, validation.Request{IdentifierType: az.Identifier.Type, Value: az.Identifier.Value, Wildcard: az.Wildcard})
		if err != nil {
			p := validationProblem(err)
			name := az.Identifier.Value
			if az.Wildcard {
				name = "*." + name
			}
			p.Detail = fmt.Sprintf("CAA recheck at finalize for %s (validated %s): %s", name, validated.Format(time.RFC3339), p.Detail)
			p.Identifier = &Identifier{Type: az.Identifier.Type, Value: name}
			return p, nil
		}
	}
	return nil, nil
}

func signProblem(err error) *Problem {
	switch ca.KindOf(err) {
	case ca.KindBadCSR, ca.KindPolicyViolation, ca.KindLint, ca.KindBadRequest:
		p := prob(http.StatusBadRequest, "badCSR", "%v", err)
		p.cause = err
		return p
	case ca.KindUnauthorized:
		p := unauthorized("%v", err)
		p.cause = err
		return p
	}
	return internal(err, "issuance failed")
}

func (s *Server) saveOrder(ctx context.Context, o *order, obj *storage.ACMEObject) error {
	return s.saveOrderIn(ctx, s.store.ACME(), o, obj)
}

func (s *Server) saveOrderIn(ctx context.Context, st storage.ACME, o *order, obj *storage.ACMEObject) error {
	data, err := encode(o)
	if err != nil {
		return err
	}
	cp := *obj
	cp.Data, cp.Status = data, o.Status
	if err := st.Update(ctx, &cp); err != nil {
		return err
	}
	*obj = cp
	return nil
}

func (s *Server) markReplaced(ctx context.Context, o *order) error {
	_, serial, err := parseCertID(o.Replaces)
	if err != nil {
		return err
	}
	for range 5 {
		obj, err := s.store.ACME().Get(ctx, kindCert, serial)
		if err != nil {
			return err
		}
		rec, err := decode[certRecord](obj)
		if err != nil {
			return err
		}
		rec.ReplacedBy = o.ID
		if obj.Data, err = encode(rec); err != nil {
			return err
		}
		err = s.store.ACME().Update(ctx, obj)
		if !errors.Is(err, storage.ErrConflict) {
			return err
		}
	}
	return storage.ErrConflict
}

// ---- certificates

func (s *Server) certificate(rc *reqCtx, req *request, serial, alt string) error {
	ctx := rc.r.Context()
	obj, err := s.store.ACME().Get(ctx, kindCert, serial)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && (obj.AccountID != req.account.ID || obj.Provisioner != rc.prov.Name)) {
		return notFound("no certificate %q for this account", serial)
	}
	if err != nil {
		return internal(err, "loading certificate record")
	}
	rec, err := s.ca.Get(ctx, serial)
	if err != nil {
		return internal(err, "loading certificate")
	}
	chains := s.chains(rec.IssuerID)
	n := 0
	if alt != "" {
		if n, err = strconv.Atoi(alt); err != nil || n < 1 || n >= len(chains) {
			return notFound("no alternate chain %q", alt)
		}
	}
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: rec.DER})
	if len(chains) > 0 {
		for _, c := range chains[n] {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}
	for i := range chains {
		if i != n {
			rc.w.Header().Add("Link", link(alternateURL(rc, serial, i), "alternate"))
		}
	}
	s.headers(rc)
	rc.w.Header().Set("Content-Type", "application/pem-certificate-chain")
	rc.w.WriteHeader(http.StatusOK)
	_, _ = rc.w.Write(buf.Bytes())
	return nil
}

func alternateURL(rc *reqCtx, serial string, i int) string {
	if i == 0 {
		return rc.url("cert", serial)
	}
	return rc.url("cert", serial, strconv.Itoa(i))
}

// chains returns the default chain for certificates signed by issuerID and
// then alternates: chains through other active issuer certificates with the
// same subject and key (a cross-signed or re-issued intermediate).
func (s *Server) chains(issuerID string) [][]*x509.Certificate {
	issuers := s.ca.Issuers()
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

// ---- revocation

// revocable are the reasons a subscriber may give (RFC 5280 codes).
var revocable = []int{ca.ReasonUnspecified, ca.ReasonKeyCompromise, ca.ReasonAffiliationChanged,
	ca.ReasonSuperseded, ca.ReasonCessationOfOperation, ca.ReasonPrivilegeWithdrawn}

func (s *Server) revokeCert(rc *reqCtx, req *request) error {
	ctx := rc.r.Context()
	var pl struct {
		Certificate string `json:"certificate"`
		Reason      *int   `json:"reason"`
	}
	if err := decodePayload(req.payload, &pl); err != nil {
		if errors.Is(err, errEmptyPayload) {
			return malformed("revokeCert needs a payload")
		}
		return err
	}
	reason := ca.ReasonUnspecified
	if pl.Reason != nil {
		reason = *pl.Reason
	}
	if !slices.Contains(revocable, reason) {
		return prob(http.StatusBadRequest, "badRevocationReason", "reason %d is not allowed (allowed: %v)", reason, revocable)
	}
	der, err := base64.RawURLEncoding.DecodeString(pl.Certificate)
	if err != nil {
		return malformed("certificate is not base64url DER")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return malformed("certificate does not parse")
	}
	serial := cert.SerialNumber.Text(16)
	rec, err := s.ca.Get(ctx, serial)
	if err != nil || !bytes.Equal(rec.DER, der) {
		return notFound("certificate was not issued by this CA")
	}
	if req.account != nil {
		obj, err := s.store.ACME().Get(ctx, kindCert, serial)
		if err != nil || obj.AccountID != req.account.ID {
			return unauthorized("the account did not order this certificate")
		}
	} else {
		pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pub.Equal(req.jwk.Key) {
			return unauthorized("the JWS is not signed by the certificate's key")
		}
	}
	if rec.Status == storage.CertRevoked {
		return prob(http.StatusBadRequest, "alreadyRevoked", "certificate is already revoked")
	}
	if err := s.ca.Revoke(ctx, serial, reason); err != nil {
		if ca.KindOf(err) == ca.KindConflict {
			return prob(http.StatusBadRequest, "alreadyRevoked", "certificate is already revoked")
		}
		return internal(err, "revoking")
	}
	s.logger.InfoContext(ctx, "acme: certificate revoked", "serial", serial, "reason", reason)
	s.headers(rc)
	rc.w.WriteHeader(http.StatusOK)
	return nil
}

// ---- renewal information (RFC 9773)

// ariRetryAfter is how often clients should poll renewalInfo.
const ariRetryAfter = 6 * time.Hour

func (s *Server) renewalInfo(rc *reqCtx, certID string) {
	aki, serial, err := parseCertID(certID)
	if err != nil {
		s.problem(rc, malformed("%v", err))
		return
	}
	rec, err := s.ca.Get(rc.r.Context(), serial)
	if err != nil {
		s.problem(rc, notFound("no certificate %s", serial))
		return
	}
	cert, err := x509.ParseCertificate(rec.DER)
	if err != nil || !bytes.Equal(cert.AuthorityKeyId, aki) {
		s.problem(rc, notFound("no certificate %s from that issuer", serial))
		return
	}
	start, end := renewalWindow(cert.NotBefore, cert.NotAfter, rec.Status == storage.CertRevoked, s.cfg.Now())
	rc.w.Header().Set("Retry-After", strconv.Itoa(int(ariRetryAfter.Seconds())))
	s.reply(rc, http.StatusOK, map[string]any{
		"suggestedWindow": map[string]string{"start": start.Format(time.RFC3339), "end": end.Format(time.RFC3339)},
	})
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
