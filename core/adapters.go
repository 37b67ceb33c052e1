package core

import (
	"context"
	"fmt"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/hsm"
)

// caCertificates adapts the CA to what engines need of it.
type caCertificates struct{ a *ca.Authority }

func (c caCertificates) NewSerial() string { return ca.NewSerial() }

// Issue records the certificate as its lease's (requesterLease), never as
// the minting identity's: such a certificate is bound to the lease, and an
// SVID among them may not renew itself (selfRenewal).
func (c caCertificates) Issue(ctx context.Context, req engines.CertRequest) (*engines.IssuedCert, error) {
	if req.LeaseID == "" {
		return nil, fmt.Errorf("%w: an engine's certificate is issued under a lease; none was given", engines.ErrInvalidRequest)
	}
	iss, err := c.a.Sign(ctx, ca.SignRequest{CSR: req.CSR, Profile: req.Profile, TTL: req.TTL, Requester: requesterLease + req.LeaseID, Serial: req.Serial})
	if err != nil {
		return nil, err
	}
	return &engines.IssuedCert{Serial: iss.Record.Serial, NotAfter: iss.Certificate.NotAfter, ChainPEM: iss.ChainPEM()}, nil
}

// Revoke is idempotent, as lease revocation must be: a serial that was
// never issued (a crash before issuance) or is already revoked is done.
func (c caCertificates) Revoke(ctx context.Context, serial string) error {
	err := c.a.Revoke(ctx, serial, ca.ReasonCessationOfOperation)
	if k := ca.KindOf(err); k == ca.KindNotFound || k == ca.KindConflict {
		return nil
	}
	return err
}

// p11Managed gives engines AES keys inside the PKCS#11 token.
type p11Managed struct{ p *hsm.PKCS11 }

func (m p11Managed) AEAD(ctx context.Context, name string, create bool) (engines.ManagedAEAD, error) {
	return m.p.SymmetricKey(ctx, name, create)
}
