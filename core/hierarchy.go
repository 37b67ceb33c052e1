package core

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// errCANotInitialised is what certificate reads get before `sigil ca init`.
func errCANotInitialised() error { return precondition("CA not initialised") }

// authority is the CA, or ErrSealed.
func (c *Core) authority() (*ca.Authority, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	return u.CA, nil
}

// Root is the CA's root certificate.
func (c *Core) Root() (*x509.Certificate, error) {
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	if root := a.Root(); root != nil {
		return root, nil
	}
	return nil, errCANotInitialised()
}

// Chain is the chain new certificates are issued under, the issuing
// intermediate first.
func (c *Core) Chain() ([]*x509.Certificate, error) {
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	if chain := a.Chain(); len(chain) > 0 {
		return chain, nil
	}
	return nil, errCANotInitialised()
}

// CRL returns shard of the CRL of issuerID; an empty issuerID means the
// newest active intermediate, the one that signs new certificates.
func (c *Core) CRL(ctx context.Context, issuerID string, shard int) ([]byte, error) {
	if shard < 0 {
		return nil, invalid("shard must not be negative")
	}
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	if issuerID == "" {
		for _, is := range a.Issuers() {
			if is.Active && is.Kind == ca.KindIntermediate {
				issuerID = is.ID
			}
		}
		if issuerID == "" {
			return nil, errCANotInitialised()
		}
	}
	der, err := a.CRL(ctx, issuerID, shard)
	return der, OpError("get CRL", err)
}

// CertQuery selects certificates from the inventory, a page at a time.
type CertQuery struct {
	Name        string
	RevokedOnly bool
	// ExpiringWithin, when positive, selects unexpired certificates that
	// expire within it.
	ExpiringWithin time.Duration
	PageToken      string
	PageSize       int // 0: the store's default; at most 1000
}

// ListCertificates returns a page of the inventory and the next page's
// token ("" on the last page).
func (c *Core) ListCertificates(ctx context.Context, q CertQuery) ([]*storage.Certificate, string, error) {
	if q.PageSize < 0 || q.PageSize > 1000 {
		return nil, "", invalid("page_size must be between 0 and 1000")
	}
	f := storage.CertFilter{Name: q.Name, RevokedOnly: q.RevokedOnly, After: q.PageToken, Limit: q.PageSize}
	if q.ExpiringWithin > 0 {
		now := time.Now()
		f.ValidAt, f.ExpiringBefore = now, now.Add(q.ExpiringWithin)
	}
	a, err := c.authority()
	if err != nil {
		return nil, "", err
	}
	certs, next, err := a.List(ctx, f)
	return certs, next, OpError("list certificates", err)
}

// CAInit describes a new hierarchy (or the intermediate of an external
// root): zero values take the defaults.
type CAInit struct {
	CommonName, Organization string
	KeyType                  string
	RootTTL, IntermediateTTL time.Duration
}

func (c *Core) initRequest(in CAInit) (ca.InitRequest, error) {
	kt := hsm.KeyType(in.KeyType)
	if kt == "" {
		kt = hsm.ECDSAP256
	}
	if !kt.Valid() {
		return ca.InitRequest{}, invalid(fmt.Sprintf("key_type %q: use one of %v", kt, hsm.KeyTypes))
	}
	if in.RootTTL < 0 || in.IntermediateTTL < 0 {
		return ca.InitRequest{}, invalid("TTLs must not be negative")
	}
	cn := in.CommonName
	if cn == "" {
		cn = c.opts.Config.CA.CommonName
	}
	return ca.InitRequest{CommonName: cn, Organization: in.Organization, KeyType: kt, RootTTL: in.RootTTL, IntermediateTTL: in.IntermediateTTL}, nil
}

// InitCA creates the root and intermediate and returns the new chain.
func (c *Core) InitCA(ctx context.Context, in CAInit) ([]*x509.Certificate, error) {
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	ir, err := c.initRequest(in)
	if err != nil {
		return nil, err
	}
	if err := a.InitHierarchy(ctx, ir); err != nil {
		return nil, OpError("initialise CA", err)
	}
	return a.Chain(), nil
}

// IntermediateCSR makes the intermediate's key and a CSR for an external
// root to sign (ImportIntermediate completes it).
func (c *Core) IntermediateCSR(ctx context.Context, in CAInit) ([]byte, error) {
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	ir, err := c.initRequest(in)
	if err != nil {
		return nil, err
	}
	csr, err := a.CreateIntermediateCSR(ctx, ir)
	return csr, OpError("create intermediate CSR", err)
}

// SignIntermediate issues a name-constrained subordinate CA; Profile
// defaults to "intermediate".
func (c *Core) SignIntermediate(ctx context.Context, caller *Caller, req ca.SubCARequest, ttlSeconds int64) (*ca.Issued, error) {
	if len(req.CSR) == 0 {
		return nil, invalid("csr is required")
	}
	ttl, err := RequestTTL(ttlSeconds)
	if err != nil {
		return nil, err
	}
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	req.Profile, req.TTL, req.Requester = IntermediateProfile(req.Profile), ttl, caller.Name()
	if err := CheckProfileName(req.Profile); err != nil {
		return nil, err
	}
	issued, err := a.SignIntermediate(ctx, req)
	return issued, OpError("sign intermediate", err)
}

// IntermediateProfile is the profile a SignIntermediate request names,
// "intermediate" by default.
func IntermediateProfile(p string) string {
	if p == "" {
		return ca.ProfileIntermediate
	}
	return p
}

// RevokeCertificate revokes a leaf certificate; the CA refuses issuer
// certificates (RevokeIssuer is the administrative path).
func (c *Core) RevokeCertificate(ctx context.Context, serial string, reason int) error {
	if serial == "" {
		return invalid("serial is required")
	}
	a, err := c.authority()
	if err != nil {
		return err
	}
	return OpError("revoke", a.Revoke(ctx, serial, reason))
}

// RevokeIssuer revokes a CA certificate named by exactly one of issuer id
// and serial.
func (c *Core) RevokeIssuer(ctx context.Context, req ca.RevokeIssuerRequest) (ca.RevokeIssuerResult, error) {
	if (req.IssuerID == "") == (req.Serial == "") {
		return ca.RevokeIssuerResult{}, invalid("name exactly one of issuer_id and serial")
	}
	a, err := c.authority()
	if err != nil {
		return ca.RevokeIssuerResult{}, err
	}
	res, err := a.RevokeIssuer(ctx, req)
	return res, OpError("revoke issuer", err)
}

// MaxChainPEM bounds an imported chain.
const MaxChainPEM = 256 << 10

// ImportIntermediate installs the intermediate an external root signed.
func (c *Core) ImportIntermediate(ctx context.Context, chainPEM []byte) (ca.IssuerInfo, error) {
	if n := len(chainPEM); n == 0 || n > MaxChainPEM {
		return ca.IssuerInfo{}, invalid(fmt.Sprintf("chain_pem must be 1-%d bytes", MaxChainPEM))
	}
	a, err := c.authority()
	if err != nil {
		return ca.IssuerInfo{}, err
	}
	is, err := a.ImportIntermediate(ctx, chainPEM)
	return is, OpError("import intermediate", err)
}

// RotateIntermediate replaces the issuing intermediate.
func (c *Core) RotateIntermediate(ctx context.Context) (ca.IssuerInfo, error) {
	a, err := c.authority()
	if err != nil {
		return ca.IssuerInfo{}, err
	}
	is, err := a.RotateIntermediate(ctx)
	return is, OpError("rotate intermediate", err)
}

// Issuers lists the CA certificates.
func (c *Core) Issuers() ([]ca.IssuerInfo, error) {
	a, err := c.authority()
	if err != nil {
		return nil, err
	}
	return a.Issuers(), nil
}
