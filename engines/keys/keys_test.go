package keys_test

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/enginestest"
	"github.com/sigil-ca/sigil/engines/keys"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
)

func newEngine(t testing.TB) (*keys.Engine, *engines.Mounts) {
	t.Helper()
	st := enginestest.New(t, func(b *barrier.Barrier) engines.Services {
		return engines.Services{Custody: hsm.NewSoft(hsmtest.NewMemBlobStore(), b, nil)}
	}, keys.Register)
	return st.Mount(t, "keys", keys.Type).(*keys.Engine), st.Mounts
}

func TestValidateRole(t *testing.T) {
	e, _ := newEngine(t)
	tests := []struct {
		name    string
		fields  map[string]string
		wantErr bool
	}{
		{"defaults", map[string]string{}, false},
		{"every key type", map[string]string{"key_type": "x25519"}, false},
		{"certificate", map[string]string{"key_type": "ed25519", "issue_certificate": "true", "uri_sans": "spiffe://d/{{role}}"}, false},
		{"ssh user", map[string]string{"type": "ssh_user", "allowed_principals": "{{identity}},deploy"}, false},
		{"unknown key type", map[string]string{"key_type": "dsa"}, true},
		{"certificate for aes", map[string]string{"key_type": "aes-256", "issue_certificate": "true"}, true},
		{"names without certificate", map[string]string{"common_name": "x"}, true},
		{"unknown placeholder", map[string]string{"issue_certificate": "true", "common_name": "{{password}}"}, true},
		{"ssh without principals", map[string]string{"type": "ssh_host"}, true},
		{"principals on key role", map[string]string{"allowed_principals": "a"}, true},
		{"unknown critical option", map[string]string{"type": "ssh_user", "allowed_principals": "a", "critical_options": `{"permit-everything":""}`}, true},
		{"ssh with principal_map only", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d/ns/ops/*":["ops"],"spiffe://d/ns/a/alice":["alice","deploy"],"token:ci-1":["deploy"]}`}, false},
		{"principal_map not JSON", map[string]string{"type": "ssh_user", "principal_map": "spiffe://d/a=alice"}, true},
		{"principal_map on key role", map[string]string{"principal_map": `{"spiffe://d/a":["a"]}`}, true},
		{"principal_map pattern not an identity", map[string]string{"type": "ssh_user", "principal_map": `{"alice":["alice"]}`}, true},
		{"principal_map wildcard trust domain", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://*/a":["a"]}`}, true},
		{"principal_map other wildcard", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d/a?":["a"]}`}, true},
		{"principal_map whole trust domain", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d":["a"]}`}, true},
		{"principal_map no principals", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d/a":[]}`}, true},
		{"principal_map star principal", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d/a":["*"]}`}, true},
		{"principal_map placeholder", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d/a":["{{identity}}"]}`}, true},
		{"principal_map space in principal", map[string]string{"type": "ssh_user", "principal_map": `{"spiffe://d/a":["a b"]}`}, true},
		{"principal_map bad token pattern", map[string]string{"type": "ssh_user", "principal_map": `{"token:*":["a"]}`}, true},
		{"ttl over max", map[string]string{"ttl": "2h", "max_ttl": "1h"}, true},
		{"unknown kind", map[string]string{"type": "gpg"}, true},
		{"unknown key", map[string]string{"colour": "red"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.ValidateRole(context.Background(), "r", tt.fields)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, engines.ErrInvalidConfig) {
				t.Fatalf("%v is not ErrInvalidConfig", err)
			}
		})
	}
}

// Every key type: the secret parses, and its public half matches the one
// returned in clear.
func TestMintedKeys(t *testing.T) {
	ctx := context.Background()
	e, _ := newEngine(t)
	for _, typ := range keys.KeyTypes {
		t.Run(typ, func(t *testing.T) {
			p, err := e.Prepare(ctx, engines.Role{Name: "r", Fields: map[string]string{"key_type": typ}},
				engines.MintRequest{LeaseID: "keys/r/x", Identity: "token:t", Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			sec, err := e.Create(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if typ == keys.AES256 || typ == keys.HMACSHA256 {
				k, err := base64.StdEncoding.DecodeString(sec.Data["key"])
				if err != nil || len(k) != 32 {
					t.Fatalf("symmetric key %q", sec.Data["key"])
				}
				if sec.Public["key"] != "" {
					t.Fatal("symmetric key in the public data")
				}
				return
			}
			block, _ := pem.Decode([]byte(sec.Data["private_key"]))
			priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			pblock, _ := pem.Decode([]byte(sec.Public["public_key"]))
			pub, err := x509.ParsePKIXPublicKey(pblock.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			var mine crypto.PublicKey
			switch k := priv.(type) {
			case crypto.Signer:
				mine = k.Public()
			case *ecdh.PrivateKey:
				mine = k.PublicKey()
			}
			if !mine.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatal("public data does not match the private key")
			}
			if _, ok := sec.Public["private_key"]; ok {
				t.Fatal("private key in the public data")
			}
		})
	}
}

func sshPub(t *testing.T, k crypto.PublicKey) []byte {
	t.Helper()
	p, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.MarshalAuthorizedKey(p)
}

func TestSignSSH(t *testing.T) {
	ctx := context.Background()
	e, _ := newEngine(t)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	role := engines.Role{Name: "users", Fields: map[string]string{"type": "ssh_user", "allowed_principals": "{{identity}},deploy",
		"default_principals": "deploy", "ttl": "10m", "critical_options": `{"source-address":"10.0.0.0/8"}`}}
	cert, err := e.SignSSH(ctx, role, keys.SSHRequest{PublicKey: sshPub(t, edPub), Identity: "token:alice"})
	if err != nil {
		t.Fatal(err)
	}
	parsed, _, _, _, err := ssh.ParseAuthorizedKey(cert.Authorized)
	if err != nil {
		t.Fatal(err)
	}
	c := parsed.(*ssh.Certificate)
	caPub, err := e.SSHCAPublicKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ca, _, _, _, _ := ssh.ParseAuthorizedKey(caPub)
	checker := ssh.CertChecker{SupportedCriticalOptions: []string{"source-address"}, IsUserAuthority: func(k ssh.PublicKey) bool { return string(k.Marshal()) == string(ca.Marshal()) }}
	if err := checker.CheckCert("deploy", c); err != nil {
		t.Fatalf("certificate does not check against the CA key: %v", err)
	}
	if !slices.Equal(c.ValidPrincipals, []string{"deploy"}) || c.CriticalOptions["source-address"] != "10.0.0.0/8" ||
		c.CertType != ssh.UserCert {
		t.Fatalf("certificate %+v", c)
	}
	if _, ok := c.Extensions["permit-pty"]; !ok {
		t.Fatal("user certificate lacks the default extensions")
	}
	if life := time.Duration(c.ValidBefore-c.ValidAfter) * time.Second; life != 10*time.Minute+30*time.Second {
		t.Fatalf("validity %v", life)
	}

	for name, tc := range map[string]struct {
		req  keys.SSHRequest
		want error
	}{
		"templated principal": {keys.SSHRequest{PublicKey: sshPub(t, edPub), Identity: "token:alice", Principals: []string{"token:alice"}}, nil},
		// {{identity}} is the whole identity, not the part after ':'.
		"part of the identity":    {keys.SSHRequest{PublicKey: sshPub(t, edPub), Identity: "token:alice", Principals: []string{"alice"}}, keys.ErrPrincipalNotAllowed},
		"other principal":         {keys.SSHRequest{PublicKey: sshPub(t, edPub), Identity: "token:alice", Principals: []string{"root"}}, keys.ErrPrincipalNotAllowed},
		"someone else's name":     {keys.SSHRequest{PublicKey: sshPub(t, edPub), Identity: "token:bob", Principals: []string{"alice"}}, keys.ErrPrincipalNotAllowed},
		"someone else's identity": {keys.SSHRequest{PublicKey: sshPub(t, edPub), Identity: "token:bob", Principals: []string{"token:alice"}}, keys.ErrPrincipalNotAllowed},
		"weak rsa":                {keys.SSHRequest{PublicKey: sshPub(t, &weak.PublicKey), Identity: "token:alice"}, engines.ErrInvalidRequest},
		"garbage key":             {keys.SSHRequest{PublicKey: []byte("ssh-ed25519 AAAA"), Identity: "token:alice"}, engines.ErrInvalidRequest},
		"oversized key":           {keys.SSHRequest{PublicKey: make([]byte, keys.MaxPublicKey+1), Identity: "token:alice"}, engines.ErrInvalidRequest},
	} {
		_, err := e.SignSSH(ctx, role, tc.req)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if _, err := e.Prepare(ctx, role, engines.MintRequest{LeaseID: "keys/users/x", Now: time.Now()}); !errors.Is(err, engines.ErrNotSupported) {
		t.Fatalf("minting from an SSH role: %v", err)
	}
}

// TestSSHPrincipalBinding: principals come from the operator (principal_map
// or literal allowed_principals), never from a part of the caller's
// identity (security review finding #8).
func TestSSHPrincipalBinding(t *testing.T) {
	ctx := context.Background()
	e, _ := newEngine(t)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	pub := sshPub(t, edPub)
	const td = "spiffe://sigil.test"
	templated := engines.Role{Name: "templated", Fields: map[string]string{"type": "ssh_user",
		"allowed_principals": "{{identity}}", "default_principals": "{{identity}}"}}
	mapped := engines.Role{Name: "mapped", Fields: map[string]string{"type": "ssh_user", "principal_map": `{
		"` + td + `/ns/team-a/alice": ["alice"],
		"` + td + `/ns/ops/*": ["ops", "deploy"],
		"` + td + `/ns/ops/carol": ["carol"],
		"token:ci-1": ["deploy"]}`}}
	tests := []struct {
		name       string
		role       engines.Role
		identity   string
		principals []string
		want       []string // nil: refused with wantErr
		wantErr    error
	}{
		{"review repro: last segment root", templated, td + "/ns/team-a/root", nil, []string{td + "/ns/team-a/root"}, nil},
		{"review repro: asking for root", templated, td + "/ns/team-a/root", []string{"root"}, nil, keys.ErrPrincipalNotAllowed},
		{"another namespace's root", templated, td + "/ns/ops/root", []string{"root"}, nil, keys.ErrPrincipalNotAllowed},
		{"root token does not expand to root", templated, "token:root", nil, []string{"token:root"}, nil},
		{"root token asking for root", templated, "token:root", []string{"root"}, nil, keys.ErrPrincipalNotAllowed},
		{"mapped exact", mapped, td + "/ns/team-a/alice", nil, []string{"alice"}, nil},
		{"mapped wildcard", mapped, td + "/ns/ops/bob", nil, []string{"ops", "deploy"}, nil},
		{"mapped wildcard and exact", mapped, td + "/ns/ops/carol", nil, []string{"ops", "deploy", "carol"}, nil},
		{"mapped subset asked", mapped, td + "/ns/ops/bob", []string{"deploy"}, []string{"deploy"}, nil},
		{"mapped token", mapped, "token:ci-1", nil, []string{"deploy"}, nil},
		{"unmapped last segment root", mapped, td + "/ns/team-a/root", []string{"root"}, nil, keys.ErrPrincipalNotAllowed},
		{"unmapped gets no default", mapped, td + "/ns/team-a/root", nil, nil, engines.ErrInvalidRequest},
		{"wildcard stays in its segment", mapped, td + "/ns/ops/bob/x", nil, nil, engines.ErrInvalidRequest},
		{"other trust domain", mapped, "spiffe://other.test/ns/team-a/alice", []string{"alice"}, nil, keys.ErrPrincipalNotAllowed},
		{"another mapping's principal", mapped, td + "/ns/team-a/alice", []string{"ops"}, nil, keys.ErrPrincipalNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := e.SignSSH(ctx, tc.role, keys.SSHRequest{PublicKey: pub, Identity: tc.identity, Principals: tc.principals})
			if tc.want == nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, %v; want %v", cert, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			parsed, _, _, _, err := ssh.ParseAuthorizedKey(cert.Authorized)
			if err != nil {
				t.Fatal(err)
			}
			if got := parsed.(*ssh.Certificate).ValidPrincipals; !slices.Equal(got, tc.want) || !slices.Equal(cert.Principals, tc.want) {
				t.Fatalf("principals %q, want %q", got, tc.want)
			}
		})
	}
}
