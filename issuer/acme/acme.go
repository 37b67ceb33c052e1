package acme

import (
	"context"
	"crypto/x509"
	"net/http"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/issuer/acme/wfe"
	"github.com/sigil-ca/sigil/storage"
)

// Types of the RA and the WFE, under the names the rest of Sigil uses.
type (
	CA          = ra.CA
	VA          = ra.VA
	Sealer      = ra.Sealer
	Store       = ra.Store
	Deps        = ra.Deps
	Profile     = ra.Profile
	Provisioner = ra.Provisioner
	Identifier  = ra.Identifier
	Problem     = ra.Problem
	EABPolicy   = ra.EABPolicy
	EABKey      = ra.EABKey
	EABInfo     = ra.EABInfo
	AccountInfo = ra.AccountInfo
	Rate        = wfe.Rate
	RateLimits  = wfe.RateLimits
)

// ErrNotFound is returned by the management methods for unknown ids.
var ErrNotFound = ra.ErrNotFound

// EABSealKind is the barrier kind EAB HMAC keys are sealed under.
const EABSealKind = ra.EABSealKind

// DefaultCertLifetime is the lifetime of certificates whose profile sets
// none.
const DefaultCertLifetime = ra.DefaultCertLifetime

// PruneBatch is how many rows Prune deletes per statement.
const PruneBatch = ra.PruneBatch

// Config configures the server: the RA's settings and the front end's.
type Config struct {
	// BaseURL is the public URL the handler is mounted at, e.g.
	// "https://sigil.example:8443/acme". The directory of the default
	// provisioner is BaseURL+"/directory".
	BaseURL string
	// Provisioners served; at least one.
	Provisioners []Provisioner
	// DefaultProvisioner names the provisioner served at BaseURL itself;
	// default: the first.
	DefaultProvisioner string
	NonceLifetime      time.Duration // default 1h
	OrderLifetime      time.Duration // pending orders and authorizations; default 7 days
	AuthzLifetime      time.Duration // valid authorizations (reuse window); default 30 days
	MaxBodySize        int64         // default 64 KiB
	// SingleNode: this is the only server on its database (the embedded
	// store). Nonces then cost no storage write (wfe.Config.LocalNonces)
	// and accounts are read from memory (ra.Config.SingleNode).
	SingleNode bool
	// ValidationWorkers bounds concurrent validations; default 32.
	ValidationWorkers int
	// ValidationWait is how long a challenge POST may wait for its
	// (asynchronous) validation before answering "processing"; 0 (the
	// default) answers at once.
	ValidationWait time.Duration
	// SignTimeout bounds one finalize's call to the CA; default 30 s.
	SignTimeout time.Duration
	// RateLimits are per client IP on newNonce, newAccount and newOrder.
	RateLimits RateLimits
	// CAARecheckAge: at finalize, CAA is checked again for every
	// authorization validated longer ago than this; default 8 hours.
	CAARecheckAge time.Duration
	Now           func() time.Time
}

// Server is the ACME server: an RA behind its web front end. Create it
// with New; mount Handler at the path of Config.BaseURL; call Close on
// shutdown to stop pending validations.
type Server struct {
	cfg Config
	ra  *ra.RA
	wfe *wfe.WFE
}

// New builds a server.
func New(cfg Config, deps Deps) (*Server, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg}
	// Both halves read the clock through s.cfg, so one clock drives them.
	now := func() time.Time { return s.cfg.Now() }
	authority, err := ra.New(ra.Config{Provisioners: cfg.Provisioners, DefaultProvisioner: cfg.DefaultProvisioner,
		OrderLifetime: cfg.OrderLifetime, AuthzLifetime: cfg.AuthzLifetime, ValidationWorkers: cfg.ValidationWorkers,
		ValidationWait: cfg.ValidationWait, SignTimeout: cfg.SignTimeout, CAARecheckAge: cfg.CAARecheckAge, SingleNode: cfg.SingleNode, Now: now}, deps)
	if err != nil {
		return nil, err
	}
	front, err := wfe.New(wfe.Config{BaseURL: cfg.BaseURL, NonceLifetime: cfg.NonceLifetime, MaxBodySize: cfg.MaxBodySize,
		LocalNonces: cfg.SingleNode, RateLimits: cfg.RateLimits, Now: now, Logger: deps.Logger}, authority, deps.Store, deps.Sealer)
	if err != nil {
		authority.Close()
		return nil, err
	}
	s.ra, s.wfe = authority, front
	return s, nil
}

// Handler serves the ACME API under the path of Config.BaseURL (for
// example /acme/directory and /acme/NAME/directory).
func (s *Server) Handler() http.Handler { return s.wfe.Handler() }

// Unavailable is the ACME front end while no Server runs: every request
// gets a serverInternal problem (503) with detail.
func Unavailable(detail string) http.Handler { return wfe.Unavailable(detail) }

// Close cancels running validations and waits for them to finish.
func (s *Server) Close() error { return s.ra.Close() }

// CreateEAB creates an External Account Binding key for a provisioner
// ("" is the default provisioner).
func (s *Server) CreateEAB(ctx context.Context, provisioner string, policy EABPolicy) (*EABKey, error) {
	return s.ra.CreateEAB(ctx, provisioner, policy)
}

// ListEAB lists a provisioner's keys ("" lists every provisioner's).
func (s *Server) ListEAB(ctx context.Context, provisioner string) ([]EABInfo, error) {
	return s.ra.ListEAB(ctx, provisioner)
}

// RevokeEAB makes an unused key unusable.
func (s *Server) RevokeEAB(ctx context.Context, keyID string) error {
	return s.ra.RevokeEAB(ctx, keyID)
}

// ListAccounts lists a provisioner's accounts ("" lists all).
func (s *Server) ListAccounts(ctx context.Context, provisioner string) ([]AccountInfo, error) {
	return s.ra.ListAccounts(ctx, provisioner)
}

// DeactivateAccount deactivates an account: it can no longer sign requests.
func (s *Server) DeactivateAccount(ctx context.Context, id string) error {
	return s.ra.DeactivateAccount(ctx, id)
}

// Prune deletes expired ACME objects; see ra.RA.Prune.
func (s *Server) Prune(ctx context.Context, grace time.Duration) (int, error) {
	return s.ra.Prune(ctx, grace)
}

// EABRewrapper lists the sealed EAB HMAC keys, for the barrier's rewrap
// registry.
func EABRewrapper(st storage.ACME) ra.EABRewrapper { return ra.NewEABRewrapper(st) }

// CertID returns the RFC 9773 certID of a certificate.
func CertID(cert *x509.Certificate) string { return ra.CertID(cert) }
