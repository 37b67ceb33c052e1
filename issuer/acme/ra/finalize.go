package ra

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// FinalizeRequest is a finalize (RFC 8555 §7.4): the CSR, DER.
type FinalizeRequest struct {
	Account *Account
	OrderID string
	CSR     []byte
}

// unusableRetry is the Retry-After of a finalize refused because the
// issuing CA certificate is unusable: an operator has to act.
const unusableRetry = time.Hour

// csrNames returns the CSR's identifiers in order form, sorted, or why the
// CSR cannot be issued as requested. A name only in the common name counts
// (RFC 8555 §7.4: in the commonName, a subjectAltName, or both); the CA
// copies it into the subjectAltName.
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
		set[k] = true
	}
	if len(set) == 0 {
		return nil, errors.New("CSR names no identifier (neither a subject alternative name nor a common name)")
	}
	return slices.Sorted(maps.Keys(set)), nil
}

func orderNames(o *Order) []string {
	out := make([]string, 0, len(o.Identifiers))
	for _, id := range o.Identifiers {
		out = append(out, id.key())
	}
	slices.Sort(out)
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
	return slices.Sorted(maps.Keys(set))
}

// Finalize issues the certificate of a ready order.
func (ra *RA) Finalize(ctx context.Context, req FinalizeRequest) (*Order, error) {
	acct := req.Account
	o, obj, err := ra.loadOrder(ctx, acct, req.OrderID)
	if err != nil {
		return nil, err
	}
	// The authorizations are read once, for the status and the CAA
	// recheck.
	var azs []*storage.ACMEObject
	if o.Status == StatusPending {
		if azs, err = ra.orderAuthzs(ctx, o); err != nil {
			return nil, internal(err, "computing order status")
		}
	}
	if st := statusFrom(o, azs, ra.cfg.Now()); st != StatusReady {
		return nil, errorf(KindOrderNotReady, "order is %s, not ready", st)
	}
	checked, err := ca.CheckCSR(req.CSR)
	if err != nil {
		return nil, errorf(KindBadCSR, "%v", err)
	}
	csr := checked.Request()
	got, err := csrNames(csr)
	if err != nil {
		return nil, errorf(KindBadCSR, "%v", err)
	}
	want := orderNames(o)
	if !slices.Equal(got, want) {
		return nil, errorf(KindBadCSR, "CSR names %v do not equal the order's identifiers %v", got, want)
	}
	if tp, err := Thumbprint(&jose.JSONWebKey{Key: csr.PublicKey}); err == nil && tp == acct.Thumbprint() {
		return nil, errorf(KindBadCSR, "the certificate key must not be the account key")
	}
	if rej, err := ra.recheckCAA(ctx, azs); err != nil {
		return nil, internal(err, "rechecking CAA")
	} else if rej != nil {
		o.Status, o.Error = StatusInvalid, rej.Problem()
		if err := ra.saveOrder(ctx, ra.store.ACME(), o, obj); err != nil && !errors.Is(err, storage.ErrConflict) {
			ra.logger.ErrorContext(ctx, "acme: marking order invalid", "order", o.ID, "error", err)
		}
		return nil, rej
	}
	prov, err := ra.Provisioner(acct.prov)
	if err != nil {
		return nil, internal(err, "account provisioner")
	}
	prof := prov.Profiles[o.Profile]
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ra.cfg.SignTimeout)
	defer cancel()
	// The order becomes valid and the certificate's ACME record is written
	// in the transaction that records the certificate: both or neither.
	// The order's update there is the claim: it succeeds only if the
	// order is still the version read above, so of concurrent finalizes
	// exactly one records its certificate; the others' are never recorded
	// nor returned (no claim write beforehand: a commit fewer per
	// enrollment). o and obj are only read there (the hook may run twice,
	// after a failed group commit).
	valid := *o
	valid.Status, valid.Error = StatusValid, nil
	issued, serr := ra.ca.Sign(sctx, ca.SignRequest{
		Checked: checked, Profile: prof.CAProfile, TTL: prof.TTL,
		Requester: "acme:" + prov.Name + ":" + acct.ID,
		Authorize: func(n ca.Names) error {
			if got := caNames(n); !slices.Equal(got, want) {
				return fmt.Errorf("names %v are not the order's %v", got, want)
			}
			return nil
		},
		InRecord: func(ctx context.Context, tx storage.Repos, rec *storage.Certificate) error {
			if err := putObj(ctx, tx.ACME(), kindCert, rec.Serial, prov.Name, acct.ID, o.ID, StatusValid,
				rec.NotAfter, &certRecord{Serial: rec.Serial, OrderID: o.ID}); err != nil {
				return err
			}
			v, cp := valid, *obj
			v.CertSerial = rec.Serial
			if err := ra.saveOrder(ctx, tx.ACME(), &v, &cp); errors.Is(err, storage.ErrConflict) {
				return errOrderClaimed
			} else if err != nil {
				return err
			}
			return nil
		},
	})
	if errors.Is(serr, errOrderClaimed) {
		return nil, errorf(KindOrderNotReady, "order is already being finalized")
	}
	if serr != nil {
		e := signError(serr)
		o.Status, o.Error = StatusInvalid, e.Problem()
		if err := ra.saveOrder(sctx, ra.store.ACME(), o, obj); err != nil && !errors.Is(err, storage.ErrConflict) {
			ra.logger.ErrorContext(ctx, "acme: marking order invalid", "order", o.ID, "error", err)
		}
		return nil, e
	}
	serial := issued.Record.Serial
	o.Status, o.CertSerial = StatusValid, serial
	if o.Replaces != "" {
		if err := ra.markReplaced(sctx, o); err != nil {
			ra.logger.ErrorContext(ctx, "acme: marking certificate replaced", "order", o.ID, "error", err)
		}
	}
	ra.logger.InfoContext(ctx, "acme: certificate issued", "provisioner", prov.Name, "account", acct.ID,
		"order", o.ID, "serial", serial)
	return ra.withStatus(ctx, o)
}

// errOrderClaimed: another finalize (or another change) moved the order on
// while this one was issuing.
var errOrderClaimed = errors.New("acme: the order changed during issuance")

// signError maps the CA's refusal to the client's error. An unusable
// issuer is the operator's to fix, so the client hears that and when to
// try again rather than a bare internal error.
func signError(err error) *Error {
	var e *Error
	switch ca.KindOf(err) {
	case ca.KindBadCSR, ca.KindPolicyViolation, ca.KindLint, ca.KindBadRequest:
		e = errorf(KindBadCSR, "%v", err)
	case ca.KindUnauthorized, ca.KindForbidden:
		e = unauthorized("%v", err)
	case ca.KindIssuerUnusable, ca.KindNotInitialized:
		e = errorf(KindUnavailable, "the CA cannot issue at the moment (the issuing CA certificate is revoked, expired or missing); the operator has been told, try again later")
		e.RetryAfter = unusableRetry
	default:
		return internal(err, "issuance failed")
	}
	e.cause = err
	return e
}

func (ra *RA) saveOrder(ctx context.Context, st storage.ACME, o *Order, obj *storage.ACMEObject) error {
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

func (ra *RA) markReplaced(ctx context.Context, o *Order) error {
	_, serial, err := parseCertID(o.Replaces)
	if err != nil {
		return err
	}
	for range 5 {
		obj, err := ra.store.ACME().Get(ctx, kindCert, serial)
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
		err = ra.store.ACME().Update(ctx, obj)
		if !errors.Is(err, storage.ErrConflict) {
			return err
		}
	}
	return storage.ErrConflict
}

// caaChecker rechecks CAA (*validation.VA has it).
type caaChecker interface {
	CheckCAA(ctx context.Context, req validation.Request) error
}

// recheckCAA checks CAA again for each of the order's authorizations that
// was validated more than CAARecheckAge ago (authorizations are reused for
// AuthzLifetime, far longer), as Boulder does: a domain owner's CAA change
// takes effect on the next issuance, not a month later. It returns the
// refusal, or a storage failure.
func (ra *RA) recheckCAA(ctx context.Context, azs []*storage.ACMEObject) (*Error, error) {
	cc, ok := ra.va.(caaChecker)
	if !ok {
		return nil, nil
	}
	now := ra.cfg.Now()
	for _, obj := range azs {
		az, err := decode[Authorization](obj)
		if err != nil {
			return nil, err
		}
		if az.Identifier.Type != validation.IdentifierDNS {
			continue // IP addresses have no CAA
		}
		var validated time.Time
		for _, c := range az.Challenges {
			if c.Status == StatusValid && c.Validated != nil && c.Validated.After(validated) {
				validated = *c.Validated
			}
		}
		if !validated.IsZero() && now.Sub(validated) <= ra.cfg.CAARecheckAge {
			continue
		}
		err = cc.CheckCAA(ctx, validation.Request{IdentifierType: az.Identifier.Type, Value: az.Identifier.Value, Wildcard: az.Wildcard})
		if err != nil {
			e := validationError(err)
			name := az.Identifier.Value
			if az.Wildcard {
				name = "*." + name
			}
			e.Detail = fmt.Sprintf("CAA recheck at finalize for %s (validated %s): %s", name, validated.Format(time.RFC3339), e.Detail)
			e.Identifier = &Identifier{Type: az.Identifier.Type, Value: name}
			return e, nil
		}
	}
	return nil, nil
}
