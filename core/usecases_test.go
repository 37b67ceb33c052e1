package core_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/storage"
)

// usecaseCore is an initialised core with policies written.
func usecaseCore(t *testing.T, policies map[string]string) (*core.Core, *core.Unsealed) {
	t.Helper()
	c, _ := newStack(t).open(t)
	initialise(t, c, 1, 1)
	u := c.Current()
	for name, doc := range policies {
		if _, err := u.Policies.Put(context.Background(), name, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	return c, u
}

// caller is the core.Caller an authentication of id yields.
func caller(t *testing.T, u *core.Unsealed, id *auth.Identity) *core.Caller {
	t.Helper()
	eng, err := u.Policies.Engine(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &core.Caller{Identity: id, Policies: eng.SetFor(policy.Subject{SPIFFEID: id.SPIFFEID, Policies: id.Policies})}
}

func svidCSR(t *testing.T, ids ...string) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, id := range ids {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// TestSignSelfRenewal: a workload authenticated by its SVID renews its own
// SPIFFE ID with the workload profile and no grant, recorded as a no-grant
// decision; every other request (another ID, a second name, another
// profile, a token caller with the same SPIFFE ID in its identity, an SVID
// bound to a lease or a registration entry) needs create on
// ca/sign/PROFILE, and a grant still works as before.
func TestSignSelfRenewal(t *testing.T) {
	const self, other = "spiffe://sigil.test/ns/web/api", "spiffe://sigil.test/ns/web/admin"
	c, u := usecaseCore(t, map[string]string{
		"signer": "rules:\n  - path: \"ca/sign/workload\"\n    capabilities: [create]\nnames:\n  uris: [\"spiffe://sigil.test/ns/web/*\"]\n",
	})
	if err := u.CA.InitHierarchy(context.Background(), ca.InitRequest{CommonName: "core test", KeyType: hsm.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	svid := &auth.Identity{Name: self, SPIFFEID: self}
	tests := []struct {
		name     string
		id       *auth.Identity
		profile  string
		csr      []byte
		wantKind errs.Kind // Internal: success
		reason   string    // in the recorded decision
	}{
		{"own ID, no grant", svid, "workload", svidCSR(t, self), errs.Internal, "renew its own identity"},
		{"another ID, no grant", svid, "workload", svidCSR(t, other), errs.PermissionDenied, "only its own identity"},
		{"own ID and another, no grant", svid, "workload", svidCSR(t, self, other), errs.InvalidArgument, "renew its own identity"},
		{"server profile, no grant", svid, "server", csr(t), errs.PermissionDenied, ""},
		{"token caller", &auth.Identity{Name: "token:t1", TokenID: "t1", SPIFFEID: self}, "workload", svidCSR(t, self), errs.PermissionDenied, ""},
		{"another ID, with the grant", &auth.Identity{Name: self, SPIFFEID: self, Policies: []string{"signer"}}, "workload", svidCSR(t, other), errs.Internal, ""},
		{"own ID, SVID enrolled by a join token", &auth.Identity{Name: self, SPIFFEID: self, SVIDRequester: "join:" + self}, "workload", svidCSR(t, self), errs.Internal, "renew its own identity"},
		// An SVID bound to a lease or an entry would otherwise renew itself
		// past the lease's expiry or revocation, or the entry's deletion.
		{"own ID, SVID bound to a lease", &auth.Identity{Name: self, SPIFFEID: self, SVIDRequester: "lease:keys/svc/abc"}, "workload", svidCSR(t, self), errs.PermissionDenied, "issued under keys/svc/abc"},
		{"own ID, SVID of a registration entry", &auth.Identity{Name: self, SPIFFEID: self, SVIDRequester: "agent:spiffe://sigil.test/node/n1"}, "workload", svidCSR(t, self), errs.PermissionDenied, "registration entry of spiffe://sigil.test/node/n1"},
		{"own ID, lease-bound SVID with the grant", &auth.Identity{Name: self, SPIFFEID: self, SVIDRequester: "lease:keys/svc/abc", Policies: []string{"signer"}}, "workload", svidCSR(t, self), errs.Internal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := caller(t, u, tt.id)
			issued, err := c.Sign(context.Background(), cl, core.SignRequest{CSR: tt.csr, Profile: tt.profile})
			if tt.wantKind == errs.Internal {
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if issued.Certificate == nil || cl.Decision == nil || !cl.Decision.Allowed {
					t.Fatalf("issued %v, decision %+v", issued.Certificate, cl.Decision)
				}
			} else {
				if !isKind(err, tt.wantKind) {
					t.Fatalf("Sign = %v, want %v", err, tt.wantKind)
				}
				if tt.wantKind == errs.PermissionDenied && (cl.Decision == nil || cl.Decision.Allowed) {
					t.Fatalf("refused call recorded as %+v", cl.Decision)
				}
			}
			if !strings.Contains(cl.Decision.Reason, tt.reason) {
				t.Errorf("decision reason %q, want it to mention %q", cl.Decision.Reason, tt.reason)
			}
		})
	}
}

// TestSignRateLimit: issuance is limited per identity and path after
// authorisation: a refused caller does not drain the bucket, the second
// certificate within the burst of one is refused with ResourceExhausted
// and says when to retry, and another identity has its own bucket.
func TestSignRateLimit(t *testing.T) {
	st := newStack(t)
	c, _ := st.open(t, func(o *core.Options) { o.Config.RateLimit = config.RateLimit{PerSecond: 0.01, Burst: 1} })
	initialise(t, c, 1, 1)
	u := c.Current()
	if _, err := u.Policies.Put(context.Background(), "signer", []byte("rules:\n  - path: \"ca/sign/server\"\n    capabilities: [create]\nnames:\n  dns: [\"*.test\"]\n")); err != nil {
		t.Fatal(err)
	}
	if err := u.CA.InitHierarchy(context.Background(), ca.InitRequest{CommonName: "core test", KeyType: hsm.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	sign := func(id *auth.Identity) error {
		_, err := c.Sign(context.Background(), caller(t, u, id), core.SignRequest{CSR: csr(t)})
		return err
	}
	granted := &auth.Identity{Name: "token:a", TokenID: "a", Policies: []string{"signer"}}
	denied := &auth.Identity{Name: "token:a", TokenID: "a"} // same bucket key, no grant
	if err := sign(denied); !isKind(err, errs.PermissionDenied) {
		t.Fatalf("ungranted Sign = %v, want PermissionDenied", err)
	}
	if err := sign(granted); err != nil {
		t.Fatalf("first Sign after a refused one: %v (the refusal drained the bucket?)", err)
	}
	err := sign(granted)
	var e *errs.Error
	if !errors.As(err, &e) || e.Kind != errs.ResourceExhausted || e.RetryAfter <= 0 || !strings.Contains(e.Msg, "rate limited on ca/sign/server") {
		t.Fatalf("second Sign = %v, want ResourceExhausted naming the path, with a retry time", err)
	}
	if err := sign(&auth.Identity{Name: "token:b", TokenID: "b", Policies: []string{"signer"}}); err != nil {
		t.Fatalf("another identity's first Sign: %v", err)
	}
}

// TestCreateTokenDelegation: a token grants only what its creator holds,
// for no longer and no more uses than its creator has left; only root
// grants root; policies must exist. Caps are reported as warnings.
func TestCreateTokenDelegation(t *testing.T) {
	ctx := context.Background()
	c, u := usecaseCore(t, map[string]string{
		"ops": "rules:\n  - path: \"sys/tokens\"\n    capabilities: [create]\n",
		"dev": "rules:\n  - path: \"kv/*\"\n    capabilities: [read]\n",
	})
	r := newRecipient(t)
	soon := time.Now().Add(time.Hour)
	ops := &auth.Identity{Name: "token:ops", TokenID: "ops", Policies: []string{"ops"}, ExpiresAt: soon, UsesLeft: 3}
	root := &auth.Identity{Name: "token:root", TokenID: "root", Policies: []string{policy.RootPolicy}}
	tests := []struct {
		name     string
		id       *auth.Identity
		req      core.TokenRequest
		wantKind errs.Kind
		warnings int
	}{
		{"root grants anything", root, core.TokenRequest{Policies: []string{"dev", "ops"}}, errs.Internal, 0},
		{"held policy, capped", ops, core.TokenRequest{Policies: []string{"ops"}, TTLSeconds: 48 * 3600, Uses: 10}, errs.Internal, 2},
		{"policy not held", ops, core.TokenRequest{Policies: []string{"dev"}}, errs.PermissionDenied, 0},
		{"root from non-root", ops, core.TokenRequest{Policies: []string{policy.RootPolicy}}, errs.PermissionDenied, 0},
		{"unknown policy", root, core.TokenRequest{Policies: []string{"nope"}}, errs.InvalidArgument, 0},
		{"no policy", root, core.TokenRequest{}, errs.InvalidArgument, 0},
		{"ttl over tokens.max_ttl", root, core.TokenRequest{Policies: []string{"dev"}, TTLSeconds: 1 << 40}, errs.InvalidArgument, 0},
		{"negative uses", root, core.TokenRequest{Policies: []string{"dev"}, Uses: -1}, errs.InvalidArgument, 0},
		{"creator out of uses", &auth.Identity{Name: "token:x", TokenID: "x", Policies: []string{"ops"}, UsesLeft: -1},
			core.TokenRequest{Policies: []string{"ops"}}, errs.FailedPrecondition, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Recipient = &core.RecipientRef{KEM: uint32(r.pub.KEM), PublicKey: r.pub.PublicKey}
			cl := caller(t, u, tt.id)
			got, err := c.CreateToken(ctx, cl, tt.req)
			if tt.wantKind != errs.Internal {
				if !isKind(err, tt.wantKind) {
					t.Fatalf("CreateToken = %v, want %v", err, tt.wantKind)
				}
				if tt.wantKind == errs.PermissionDenied && (cl.Decision == nil || cl.Decision.Allowed) {
					t.Fatalf("refused delegation recorded as %+v", cl.Decision)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Warnings) != tt.warnings || got.Delivery.Envelope == nil {
				t.Fatalf("warnings %q, envelope %d bytes", got.Warnings, len(got.Delivery.Envelope))
			}
			if exp := tt.id.ExpiresAt; !exp.IsZero() && got.Info.ExpiresAt.After(exp) {
				t.Errorf("child expires %v, after its creator %v", got.Info.ExpiresAt, exp)
			}
			if left := tt.id.UsesLeft; left > 0 && got.Info.UsesLeft > left {
				t.Errorf("child has %d uses, creator %d", got.Info.UsesLeft, left)
			}
		})
	}
}

// TestLeaseOwnership: a lease's owner acts on it with a leases/ID grant,
// another identity with the same grant does not, an administrator with
// sys/leases/OP/ID does; token leases are reachable only through
// sys/tokens, and no prefix revoke covers them.
func TestLeaseOwnership(t *testing.T) {
	ctx := context.Background()
	c, u := usecaseCore(t, map[string]string{
		"mint":  "rules:\n  - path: \"tok/creds/svc\"\n    capabilities: [read]\n  - path: \"leases/**\"\n    capabilities: [read, update, delete]\n",
		"admin": "rules:\n  - path: \"sys/leases/**\"\n    capabilities: [read, update, delete, sudo]\n",
	})
	if err := u.Mounts.Enable(ctx, "tok", tokens.Type); err != nil {
		t.Fatal(err)
	}
	if err := u.Mounts.WriteRole(ctx, "tok", "svc", map[string]string{tokens.KeyFormat: tokens.FormatOpaque, tokens.KeyTTL: "1h"}); err != nil {
		t.Fatal(err)
	}
	r := newRecipient(t)
	alice := &auth.Identity{Name: "token:alice", TokenID: "alice", Policies: []string{"mint"}}
	bob := &auth.Identity{Name: "token:bob", TokenID: "bob", Policies: []string{"mint"}}
	admin := &auth.Identity{Name: "token:adm", TokenID: "adm", Policies: []string{"admin"}}
	cr, err := c.MintCreds(ctx, caller(t, u, alice), core.CredsRequest{Mount: "tok", Role: "svc",
		Recipient: &core.RecipientRef{KEM: uint32(r.pub.KEM), PublicKey: r.pub.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	if cr.Lease.Owner != alice.Name || cr.LeaseSeconds <= 0 {
		t.Fatalf("lease %+v, %d seconds", cr.Lease, cr.LeaseSeconds)
	}
	id := cr.Lease.ID
	tests := []struct {
		name     string
		do       func(*core.Caller) error
		id       *auth.Identity
		wantKind errs.Kind
	}{
		{"owner looks up", func(cl *core.Caller) error { _, err := c.LookupLease(ctx, cl, id); return err }, alice, errs.Internal},
		{"other looks up", func(cl *core.Caller) error { _, err := c.LookupLease(ctx, cl, id); return err }, bob, errs.PermissionDenied},
		{"admin looks up", func(cl *core.Caller) error { _, err := c.LookupLease(ctx, cl, id); return err }, admin, errs.Internal},
		{"other renews", func(cl *core.Caller) error { _, err := c.RenewLease(ctx, cl, id, 60); return err }, bob, errs.PermissionDenied},
		{"token lease through leases/", func(cl *core.Caller) error { _, err := c.LookupLease(ctx, cl, "auth/token/x"); return err }, admin, errs.PermissionDenied},
		{"prefix over tokens", func(cl *core.Caller) error { _, err := c.RevokeLeases(ctx, cl, "", "auth", false); return err }, admin, errs.PermissionDenied},
		{"id and prefix", func(cl *core.Caller) error { _, err := c.RevokeLeases(ctx, cl, id, "tok", false); return err }, admin, errs.InvalidArgument},
		{"other revokes", func(cl *core.Caller) error { _, err := c.RevokeLeases(ctx, cl, id, "", false); return err }, bob, errs.PermissionDenied},
		{"owner revokes", func(cl *core.Caller) error { _, err := c.RevokeLeases(ctx, cl, id, "", false); return err }, alice, errs.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := caller(t, u, tt.id)
			err := tt.do(cl)
			if tt.wantKind == errs.Internal {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !isKind(err, tt.wantKind) {
				t.Fatalf("%v, want %v", err, tt.wantKind)
			}
			if tt.wantKind == errs.PermissionDenied && (cl.Decision == nil || cl.Decision.Allowed) {
				t.Fatalf("refused call recorded as %+v", cl.Decision)
			}
		})
	}
	if l, err := u.Leases.Lookup(ctx, id); err != nil || l.State == storage.LeaseActive {
		t.Fatalf("lease after its owner revoked it: %+v, %v", l, err)
	}
}
