package e2e

// Attack replays for the security review's findings #2 (mTLS workload
// authentication trusted client-sent intermediates and looked up the serial
// only) and #8 (the SSH {{identity}} principal was the SPIFFE ID's last path
// segment), against the built binary over gRPC.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

const mtlsAttackAdminID = "spiffe://sigil.test/ns/admin/ops"

// mtlsAttackConn dials the server presenting chain (leaf first) with key,
// and with token as bearer if not empty.
func mtlsAttackConn(t *testing.T, d *devServer, chain []*x509.Certificate, key crypto.Signer, token string) (*grpc.ClientConn, context.Context) {
	t.Helper()
	rootPEM, err := os.ReadFile(d.caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	cfg := &tls.Config{RootCAs: pool}
	if len(chain) > 0 {
		c := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
		for _, x := range chain {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return conn, ctx
}

func mtlsAttackKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mtlsAttackSign(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mtlsAttackRogueCA makes a CA with its own key, signed by parent (or
// self-signed when parent is nil).
func mtlsAttackRogueCA(t *testing.T, cn string, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	k := mtlsAttackKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	if parent == nil {
		return mtlsAttackSign(t, tmpl, tmpl, k.Public(), k), k
	}
	return mtlsAttackSign(t, tmpl, parent, k.Public(), parentKey), k
}

// mtlsAttackForgeSVID signs a client-auth X.509-SVID for id under parent,
// reusing serial (one that is in Sigil's inventory), as the review did.
func mtlsAttackForgeSVID(t *testing.T, id string, serial *big.Int, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	k := mtlsAttackKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	return mtlsAttackSign(t, tmpl, parent, k.Public(), parentKey), k
}

// mtlsAttackReadKeyPair reads a PEM certificate chain and its PKCS#8 or EC key.
func mtlsAttackReadKeyPair(t *testing.T, certPath, keyPath string) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return chain, pair.PrivateKey.(crypto.Signer)
}

// mtlsAttackWritePolicy writes a policy through the CLI as root.
func mtlsAttackWritePolicy(t *testing.T, d *devServer, name, doc string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", name, p); code != 0 {
		t.Fatalf("policy write %s: %s", name, stderr)
	}
}

const mtlsAttackAdminPolicy = `rules:
  - path: "sys/**"
    capabilities: [read, create, update, delete, list, sudo]
bindings:
  spiffe_ids: ["spiffe://sigil.test/ns/admin/*"]
`

// mtlsAttackIssueSVID has Sigil issue an SVID for id (as the token in
// d.exports) and returns the chain and key.
func mtlsAttackIssueSVID(t *testing.T, d *devServer, id string, extra ...string) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	dir := t.TempDir()
	key, cert := filepath.Join(dir, "svid.key"), filepath.Join(dir, "svid.pem")
	args := append([]string{"ca", "issue", "--spiffe-id", id, "--key-out", key, "--cert-out", cert}, extra...)
	if _, stderr, code := d.cli(t, args...); code != 0 {
		t.Fatalf("issue SVID %s: %s", id, stderr)
	}
	return mtlsAttackReadKeyPair(t, cert, key)
}

// mtlsAttackListPolicies calls an admin-only RPC and returns its status code.
func mtlsAttackListPolicies(t *testing.T, d *devServer, chain []*x509.Certificate, key crypto.Signer) (codes.Code, string) {
	t.Helper()
	conn, ctx := mtlsAttackConn(t, d, chain, key, "")
	resp, err := sigilv1.NewPolicyServiceClient(conn).List(ctx, &sigilv1.ListPoliciesRequest{})
	if err == nil {
		return codes.OK, strings.Join(resp.GetNames(), ",")
	}
	return status.Code(err), status.Convert(err).Message()
}

// TestAttackMTLSRogueSubCA replays finding #2 where the rogue CA really
// chains to Sigil's root: a production server whose root is kept offline
// by the operator (external root). The operator's root also signs a CA
// that is not Sigil's (as any second use of an offline root would, or a
// sub-CA mis-issued by finding #1). Whoever holds that CA forges an SVID
// for an admin SPIFFE ID, reuses the serial of a certificate Sigil issued,
// and sends the rogue CA as intermediate. It must not authenticate.
func TestAttackMTLSRogueSubCA(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	listenerCA, lcert, lkey := listenerTLS(t, dir)
	d := startServer(t, p("data"), false, listenerCA, "--tls-cert", lcert, "--tls-key", lkey)
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	var initResp struct {
		RootToken string `json:"root_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil {
		t.Fatalf("operator init: %s", stderr)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	csrPEM, stderr, code := d.cli(t, "ca", "init", "--external-root", "--common-name", "Sigil External Intermediate")
	if code != 0 {
		t.Fatalf("ca init --external-root: %s", stderr)
	}
	if err := os.WriteFile(p("int.csr"), []byte(csrPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("root.key"),
		"-out", p("root.pem"), "-days", "30", "-subj", "/CN=Offline Root",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	if err := os.WriteFile(p("int.ext"), []byte("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"+
		"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "openssl", "x509", "-req", "-in", p("int.csr"), "-CA", p("root.pem"), "-CAkey", p("root.key"), "-CAcreateserial",
		"-days", "20", "-extfile", p("int.ext"), "-out", p("int.pem"))
	intPEM, _ := os.ReadFile(p("int.pem"))
	rootPEM, _ := os.ReadFile(p("root.pem"))
	if err := os.WriteFile(p("chain.pem"), append(intPEM, rootPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "ca", "intermediate", "import", p("chain.pem")); code != 0 {
		t.Fatalf("ca intermediate import: %s", stderr)
	}
	rootChain, rootKey := mtlsAttackReadKeyPair(t, p("root.pem"), p("root.key"))
	root := rootChain[0]

	mtlsAttackWritePolicy(t, d, "admins", mtlsAttackAdminPolicy)
	// A real workload SVID: its serial is in the inventory, and it
	// authenticates (as a workload with no admin policy: PermissionDenied).
	app, appKey := mtlsAttackIssueSVID(t, d, "spiffe://sigil.test/ns/web/app")
	if c, msg := mtlsAttackListPolicies(t, d, app[:1], appKey); c != codes.PermissionDenied {
		t.Fatalf("Sigil's own SVID: %v %s, want PermissionDenied (authenticated, not authorised)", c, msg)
	}
	// A real admin SVID is admitted: the forgeries below are refused for
	// what they are, not because admin mTLS is broken.
	admin, adminKey := mtlsAttackIssueSVID(t, d, "spiffe://sigil.test/ns/admin/real")
	if c, msg := mtlsAttackListPolicies(t, d, admin, adminKey); c != codes.OK || !strings.Contains(msg, "admins") {
		t.Fatalf("Sigil's own admin SVID: %v %s", c, msg)
	}

	rogue, rogueKey := mtlsAttackRogueCA(t, "Sigil External Intermediate", root, rootKey)
	for _, tc := range []struct {
		name   string
		serial *big.Int
	}{
		{"inventory serial of a workload SVID", app[0].SerialNumber},
		{"inventory serial of an admin SVID", admin[0].SerialNumber},
		{"serial not in the inventory", big.NewInt(0xbadc0de)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forged, forgedKey := mtlsAttackForgeSVID(t, mtlsAttackAdminID, tc.serial, rogue, rogueKey)
			for name, chain := range map[string][]*x509.Certificate{
				"rogue CA as intermediate":          {forged, rogue},
				"rogue CA and root as intermediate": {forged, rogue, root},
			} {
				if c, msg := mtlsAttackListPolicies(t, d, chain, forgedKey); c != codes.Unauthenticated {
					t.Errorf("%s: forged admin SVID got %v %q, want Unauthenticated", name, c, msg)
				}
			}
		})
	}
}

// TestAttackMTLSForgedSVID replays finding #2 on a dev server: forgeries
// under a CA Sigil does not know, and certificates Sigil did issue but not
// as workload identities, do not authenticate; Sigil's own SVIDs still do.
func TestAttackMTLSForgedSVID(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	mtlsAttackWritePolicy(t, d, "admins", mtlsAttackAdminPolicy)
	app, appKey := mtlsAttackIssueSVID(t, d, "spiffe://sigil.test/ns/web/app")

	selfCA, selfKey := mtlsAttackRogueCA(t, "Rogue Root", nil, nil)
	forged, forgedKey := mtlsAttackForgeSVID(t, mtlsAttackAdminID, app[0].SerialNumber, selfCA, selfKey)

	// Sigil signs a client-profile certificate carrying the admin SPIFFE ID
	// (the client profile allows any URI): in the inventory, chaining to the
	// root, but not a workload identity.
	run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(dir, "client.key"),
		"-subj", "/CN=ops", "-addext", "subjectAltName=URI:"+mtlsAttackAdminID, "-out", filepath.Join(dir, "client.csr"))
	clientPEM, stderr, code := d.cli(t, "ca", "sign", "--csr", filepath.Join(dir, "client.csr"), "--profile", "client")
	if code != 0 {
		t.Fatalf("sign client certificate: %s", stderr)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.pem"), []byte(clientPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	client, clientKey := mtlsAttackReadKeyPair(t, filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"))

	tests := []struct {
		name  string
		chain []*x509.Certificate
		key   crypto.Signer
		want  codes.Code
	}{
		{"own SVID", app[:1], appKey, codes.PermissionDenied},
		{"own SVID with its chain", app, appKey, codes.PermissionDenied},
		{"own SVID with a junk intermediate", []*x509.Certificate{app[0], selfCA}, appKey, codes.PermissionDenied},
		{"forged under a self-signed CA, serial reused", []*x509.Certificate{forged, selfCA}, forgedKey, codes.Unauthenticated},
		{"client profile with the admin SPIFFE ID", client, clientKey, codes.Unauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if c, msg := mtlsAttackListPolicies(t, d, tc.chain, tc.key); c != tc.want {
				t.Fatalf("got %v %q, want %v", c, msg, tc.want)
			}
		})
	}
	// Revoked: refused like a forgery.
	if _, stderr, code := d.cli(t, "ca", "revoke", app[0].SerialNumber.Text(16)); code != 0 {
		t.Fatalf("revoke: %s", stderr)
	}
	if c, msg := mtlsAttackListPolicies(t, d, app, appKey); c != codes.Unauthenticated || !strings.Contains(msg, "revoked") {
		t.Fatalf("revoked SVID: %v %q", c, msg)
	}
}

// mtlsAttackSSHSign signs an SSH key over gRPC and returns the certificate's
// principals or the status code.
func mtlsAttackSSHSign(t *testing.T, d *devServer, chain []*x509.Certificate, key crypto.Signer, token, role string, principals ...string) ([]string, codes.Code, string) {
	t.Helper()
	conn, ctx := mtlsAttackConn(t, d, chain, key, token)
	sshKey, err := ssh.NewPublicKey(mtlsAttackKey(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := sigilv1.NewSSHServiceClient(conn).Sign(ctx, &sigilv1.SSHSignRequest{Mount: "keys", Role: role,
		PublicKey: ssh.MarshalAuthorizedKey(sshKey), Principals: principals})
	if err != nil {
		return nil, status.Code(err), status.Convert(err).Message()
	}
	parsed, _, _, _, err := ssh.ParseAuthorizedKey([]byte(resp.GetCertificate()))
	if err != nil {
		t.Fatal(err)
	}
	return parsed.(*ssh.Certificate).ValidPrincipals, codes.OK, ""
}

// TestAttackMTLSSSHPrincipal replays finding #8: a team allowed to mint
// SVIDs under its namespace names one ".../ns/team-a/root" and asks an
// {{identity}} SSH role for a certificate. It must not get principal root;
// principals an operator maps in principal_map work.
func TestAttackMTLSSSHPrincipal(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	for _, args := range [][]string{
		{"engine", "enable", "keys", "--mount", "keys"},
		{"role", "write", "keys/users", "type=ssh_user", "allowed_principals={{identity}}", "default_principals={{identity}}"},
		{"role", "write", "keys/mapped", "type=ssh_user", `principal_map={"spiffe://sigil.test/ns/team-a/alice":["alice"],"spiffe://sigil.test/ns/ops/*":["ops"]}`},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	mtlsAttackWritePolicy(t, d, "sshusers", `rules:
  - path: "keys/sign/*"
    capabilities: [update]
bindings:
  spiffe_ids: ["spiffe://sigil.test/ns/*/*"]
`)
	mtlsAttackWritePolicy(t, d, "teama", `rules:
  - path: "ca/sign/workload"
    capabilities: [create]
names:
  uris: ["spiffe://sigil.test/ns/team-a/*"]
`)
	out, stderr, code := d.cli(t, "token", "create", "--policy", "teama", "--format", "json")
	var tok struct{ Token string }
	if code != 0 || json.Unmarshal([]byte(out), &tok) != nil || tok.Token == "" {
		t.Fatalf("token create: %s %s", out, stderr)
	}
	rootToken := d.exports["SIGIL_TOKEN"]
	d.exports["SIGIL_TOKEN"] = tok.Token
	evil, evilKey := mtlsAttackIssueSVID(t, d, "spiffe://sigil.test/ns/team-a/root")
	alice, aliceKey := mtlsAttackIssueSVID(t, d, "spiffe://sigil.test/ns/team-a/alice")
	d.exports["SIGIL_TOKEN"] = rootToken
	ops, opsKey := mtlsAttackIssueSVID(t, d, "spiffe://sigil.test/ns/ops/bob")

	tests := []struct {
		name       string
		chain      []*x509.Certificate
		key        crypto.Signer
		token      string
		role       string
		principals []string
		want       []string   // principals of the certificate, if signed
		code       codes.Code // otherwise
	}{
		{"review repro: default principals", evil, evilKey, "", "users", nil, []string{"spiffe://sigil.test/ns/team-a/root"}, codes.OK},
		{"review repro: asking for root", evil, evilKey, "", "users", []string{"root"}, nil, codes.PermissionDenied},
		{"root token does not expand to root", nil, nil, rootToken, "users", nil, []string{"token:root"}, codes.OK},
		{"root token asking for root", nil, nil, rootToken, "users", []string{"root"}, nil, codes.PermissionDenied},
		{"mapped workload", alice, aliceKey, "", "mapped", nil, []string{"alice"}, codes.OK},
		{"mapped wildcard", ops, opsKey, "", "mapped", nil, []string{"ops"}, codes.OK},
		{"unmapped workload asking for root", evil, evilKey, "", "mapped", []string{"root"}, nil, codes.PermissionDenied},
		{"unmapped workload, no default", evil, evilKey, "", "mapped", nil, nil, codes.InvalidArgument},
		{"mapped workload asking for another's principal", alice, aliceKey, "", "mapped", []string{"ops"}, nil, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, c, msg := mtlsAttackSSHSign(t, d, tc.chain, tc.key, tc.token, tc.role, tc.principals...)
			if c != tc.code || !slices.Equal(got, tc.want) {
				t.Fatalf("got principals %q, %v %q; want %q, %v", got, c, msg, tc.want, tc.code)
			}
			if slices.Contains(got, "root") {
				t.Fatal("certificate for principal root")
			}
		})
	}
	// A principal_map that is not a mapping is refused at role write, with
	// what to write instead.
	if _, stderr, code := d.cli(t, "role", "write", "keys/bad", "type=ssh_user", "principal_map=spiffe://sigil.test/ns/a/b=root"); code == 0 ||
		!strings.Contains(stderr, "principal_map") {
		t.Fatalf("bad principal_map: %d %s", code, stderr)
	}
}
