package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"go.step.sm/crypto/pemutil"
)

// pkcs11Tool runs OpenSC's pkcs11-tool against the SoftHSM module, logged in
// with pin. SOFTHSM2_CONF comes from the environment hsmtest set.
func pkcs11Tool(t *testing.T, pin string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatal("pkcs11-tool not found: run scripts/deps.sh (as root: apt-get install -y opensc)")
	}
	full := append([]string{"--module", hsmtest.SoftHSMModule, "--login", "--pin", pin}, args...)
	out, err := exec.Command("pkcs11-tool", full...).CombinedOutput()
	if err != nil {
		// The PIN is an argument, never echoed in the output.
		t.Fatalf("pkcs11-tool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pinFromURI returns the pin-value query attribute of an RFC 7512 URI.
func pinFromURI(t *testing.T, uri string) string {
	t.Helper()
	_, query, ok := strings.Cut(uri, "?")
	if !ok {
		t.Fatalf("PKCS#11 URI has no query attributes")
	}
	q, err := url.ParseQuery(query)
	if err != nil || q.Get("pin-value") == "" {
		t.Fatalf("PKCS#11 URI has no pin-value (%v)", err)
	}
	return q.Get("pin-value")
}

// p11Object is one object as `pkcs11-tool --list-objects` describes it.
type p11Object struct {
	Class  string   // "Private Key Object", "Public Key Object", "Secret Key Object", ...
	Label  string   // CKA_LABEL
	ID     string   // CKA_ID in hex
	Access []string // the comma-separated flags of the "Access:" line
}

func (o p11Object) has(flag string) bool { return slices.Contains(o.Access, flag) }

// parseListObjects parses pkcs11-tool's --list-objects output: each object
// starts with an unindented "<Class> Object; <type>" line, followed by
// indented "name: value" lines.
func parseListObjects(out string) []p11Object {
	var objs []p11Object
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			class, _, ok := strings.Cut(line, ";")
			if ok && strings.HasSuffix(class, " Object") {
				objs = append(objs, p11Object{Class: class})
			}
			continue
		}
		if len(objs) == 0 {
			continue
		}
		o := &objs[len(objs)-1]
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch name {
		case "label":
			o.Label = value
		case "ID":
			o.ID = value
		case "Access":
			for f := range strings.SplitSeq(value, ",") {
				o.Access = append(o.Access, strings.TrimSpace(f))
			}
		}
	}
	return objs
}

func TestParseListObjects(t *testing.T) {
	out := `Using slot 0 with a present token (0x13e6c66)
Public Key Object; EC  EC_POINT 256 bits
  EC_POINT:   04410442
  label:      sigil-ca-root-1
  ID:         0102
  Usage:      encrypt, verify, wrap, derive
  Access:     local
Private Key Object; EC
  label:      sigil-ca-root-1
  ID:         0102
  Usage:      decrypt, sign, unwrap, derive
  Access:     sensitive, always sensitive, never extractable, local
Private Key Object; EC
  label:      leaky
  ID:         03
  Access:     extractable, local
`
	objs := parseListObjects(out)
	if len(objs) != 3 {
		t.Fatalf("parsed %d objects, want 3: %+v", len(objs), objs)
	}
	want := []p11Object{
		{Class: "Public Key Object", Label: "sigil-ca-root-1", ID: "0102", Access: []string{"local"}},
		{Class: "Private Key Object", Label: "sigil-ca-root-1", ID: "0102", Access: []string{"sensitive", "always sensitive", "never extractable", "local"}},
		{Class: "Private Key Object", Label: "leaky", ID: "03", Access: []string{"extractable", "local"}},
	}
	for i := range want {
		if objs[i].Class != want[i].Class || objs[i].Label != want[i].Label || objs[i].ID != want[i].ID || !slices.Equal(objs[i].Access, want[i].Access) {
			t.Errorf("object %d = %+v, want %+v", i, objs[i], want[i])
		}
	}
	if !objs[1].has("never extractable") || objs[2].has("never extractable") || !objs[2].has("extractable") {
		t.Error("has() misreads the access flags")
	}
}

// checkNonExtractable fails unless o is sensitive, was always sensitive and
// was never extractable (CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE,
// CKA_NEVER_EXTRACTABLE true; CKA_EXTRACTABLE false).
func checkNonExtractable(t *testing.T, o p11Object) {
	t.Helper()
	for _, flag := range []string{"sensitive", "always sensitive", "never extractable"} {
		if !o.has(flag) {
			t.Errorf("%s %q (id %s) is not %q: access %q", o.Class, o.Label, o.ID, flag, o.Access)
		}
	}
	if o.has("extractable") {
		t.Errorf("%s %q (id %s) is extractable: access %q", o.Class, o.Label, o.ID, o.Access)
	}
}

// pemCerts parses every CERTIFICATE block of s.
func pemCerts(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	certs, err := pemutil.ParseCertificateBundle([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// caCertificates returns the distinct CA certificates of the server's root
// and issuing chain.
func caCertificates(t *testing.T, d *devServer) []*x509.Certificate {
	t.Helper()
	root, stderr, code := d.cli(t, "ca", "root")
	if code != 0 {
		t.Fatalf("ca root: %s", stderr)
	}
	chain, stderr, code := d.cli(t, "ca", "chain")
	if code != 0 {
		t.Fatalf("ca chain: %s", stderr)
	}
	var cas []*x509.Certificate
	for _, c := range pemCerts(t, root+chain) {
		if c.IsCA && !slices.ContainsFunc(cas, func(o *x509.Certificate) bool { return o.Equal(c) }) {
			cas = append(cas, c)
		}
	}
	if len(cas) < 2 {
		t.Fatalf("want a root and an intermediate, got %d CA certificates", len(cas))
	}
	return cas
}

// checkCAKeysInToken lists the token's objects and checks that every
// private key Sigil created there is sensitive and never extractable, and
// that each CA certificate's public key belongs to one of them.
//
// Matching: for every private key object pkcs11-tool exports the public key
// object with the same CKA_ID (`--read-object --type pubkey --id`, a DER
// SubjectPublicKeyInfo), and we compare it with the certificate's public key
// as parsed keys (crypto.PublicKey.Equal), so encoding differences between
// OpenSC and Go (named curve parameters, point compression) cannot cause a
// false mismatch, and a certificate can only match a key that is in the
// token. It returns the labels of the matched private keys.
func checkCAKeysInToken(t *testing.T, pin string, cas []*x509.Certificate) []string {
	t.Helper()
	objs := parseListObjects(pkcs11Tool(t, pin, "--list-objects"))
	var privs []p11Object
	for _, o := range objs {
		switch {
		case o.Class == "Private Key Object":
			privs = append(privs, o)
			checkNonExtractable(t, o)
		case o.Class == "Secret Key Object" && strings.HasPrefix(o.Label, "sigil-"):
			checkNonExtractable(t, o)
		}
	}
	if len(privs) == 0 {
		t.Fatalf("the token holds no private keys; objects: %+v", objs)
	}
	dir := t.TempDir()
	pubByID := map[string]crypto.PublicKey{}
	for _, o := range privs {
		if !strings.HasPrefix(o.Label, "sigil-") {
			t.Errorf("private key %q (id %s) is not labelled sigil-*", o.Label, o.ID)
		}
		if o.ID == "" {
			t.Errorf("private key %q has no CKA_ID", o.Label)
			continue
		}
		path := filepath.Join(dir, o.ID+".der")
		pkcs11Tool(t, pin, "--read-object", "--type", "pubkey", "--id", o.ID, "--output-file", path)
		der, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			t.Fatalf("public key of %q (id %s) from the token: %v", o.Label, o.ID, err)
		}
		pubByID[o.ID] = pub
	}
	var matched []string
	for _, c := range cas {
		found := ""
		for _, o := range privs {
			if pub, ok := pubByID[o.ID]; ok && pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
				found = o.Label
			}
		}
		if found == "" {
			t.Errorf("no private key in the token matches CA certificate %q", c.Subject)
			continue
		}
		matched = append(matched, found)
	}
	return matched
}

// writeCSR writes a PEM CSR for cn (and DNS SAN cn) to a file in dir.
func writeCSR(t *testing.T, dir, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, cn+".csr")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// signAndVerify has the server sign a CSR and verifies the leaf up to the
// root with the standard library, proving the intermediate's key signs.
func signAndVerifyLeaf(t *testing.T, d *devServer, dir, cn string, root *x509.Certificate) *x509.Certificate {
	t.Helper()
	out, stderr, code := d.cli(t, "ca", "sign", "--csr", writeCSR(t, dir, cn), "--profile", "server", "--ttl", "1h")
	if code != 0 {
		t.Fatalf("ca sign %s: %s", cn, stderr)
	}
	certs := pemCerts(t, out)
	if len(certs) == 0 {
		t.Fatalf("ca sign printed no certificate: %q", out)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	chain, _, _ := d.cli(t, "ca", "chain")
	for _, c := range pemCerts(t, chain) {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: cn}); err != nil {
		t.Fatalf("leaf %s does not verify to the root: %v", cn, err)
	}
	return certs[0]
}

// TestHSMDevServer: a dev server with --hsm keeps its root and intermediate
// keys in the token, created sensitive and never extractable, and nothing of
// them in its database.
func TestHSMDevServer(t *testing.T) {
	uri := hsmtest.NewSoftHSMToken(t)
	pin := pinFromURI(t, uri)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	d := startDev(t, dataDir, "--hsm", uri)

	out, stderr, code := d.cli(t, "status", "--format", "json")
	if code != 0 {
		t.Fatalf("status: %s", stderr)
	}
	var st struct{ Custody string }
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Custody == "software" || st.Custody == "" {
		t.Errorf("status custody = %q with --hsm", st.Custody)
	}

	cas := caCertificates(t, d)
	var root *x509.Certificate
	for _, c := range cas {
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			root = c
		}
	}
	if root == nil {
		t.Fatal("no self-signed root among the CA certificates")
	}
	signAndVerifyLeaf(t, d, dir, "hsm-dev.example.test", root)

	labels := checkCAKeysInToken(t, pin, cas)
	t.Logf("CA keys in the token: %v", labels)
	if len(labels) == len(cas) && labels[0] == labels[1] {
		t.Errorf("root and intermediate share the key %q", labels[0])
	}

	// The URI's PIN never reaches the server's logs.
	if strings.Contains(d.stderr.String(), pin) {
		t.Error("the server logged the token PIN")
	}

	// Restart: the same keys are found again by name.
	d.stop(t)
	d2 := startDev(t, dataDir, "--hsm", uri)
	if got := caCertificates(t, d2); len(got) != len(cas) || !got[0].Equal(cas[0]) {
		t.Fatal("CA certificates changed across restart")
	}
	signAndVerifyLeaf(t, d2, dir, "hsm-dev-restarted.example.test", root)
	d2.stop(t)

	// With a token, the software keystore's table stays empty.
	db := openSQLite(t, filepath.Join(dataDir, "sigil.db"))
	var n int
	if err := db.QueryRow("SELECT count(*) FROM key_blobs").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("key_blobs holds %d software keys on an HSM server", n)
	}
}

// TestHSMAutoUnseal: a production server with --hsm is initialised with
// recovery shares and auto_unseal, unseals itself after a restart, keeps
// answering with the same CA, and can still be unsealed with the recovery
// shares after an explicit seal.
func TestHSMAutoUnseal(t *testing.T) {
	uri := hsmtest.NewSoftHSMToken(t)
	pin := pinFromURI(t, uri)
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	dataDir := filepath.Join(dir, "data")
	prod := func() *devServer {
		return startServer(t, dataDir, false, listenerCA, "--tls-cert", cert, "--tls-key", key, "--hsm", uri)
	}
	status := func(d *devServer) statusJSON {
		t.Helper()
		out, stderr, code := d.cli(t, "status", "--format", "json")
		// status exits 2 when sealed, like vault status.
		if code != 0 && code != 2 {
			t.Fatalf("status: %s", stderr)
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		if (code == 2) != st.Sealed {
			t.Fatalf("status exit %d with sealed %v", code, st.Sealed)
		}
		return st
	}

	d := prod()
	if st := status(d); st.Initialized || !st.Sealed {
		t.Fatalf("fresh server status = %+v", st)
	}
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "3", "--threshold", "2", "--format", "json")
	if code != 0 {
		t.Fatalf("operator init: %s", stderr)
	}
	var initResp struct {
		Shares     []string `json:"shares"`
		RootToken  string   `json:"root_token"`
		AutoUnseal bool     `json:"auto_unseal"`
	}
	if err := json.Unmarshal([]byte(out), &initResp); err != nil || len(initResp.Shares) != 3 || initResp.RootToken == "" {
		t.Fatalf("init output %q: %v", out, err)
	}
	if !initResp.AutoUnseal {
		t.Fatalf("operator init with --hsm: auto_unseal = false")
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	if st := status(d); st.Sealed {
		t.Fatalf("sealed right after init: %+v", st)
	}
	if _, stderr, code := d.cli(t, "ca", "init", "--common-name", "HSM Auto-unseal CA"); code != 0 {
		t.Fatalf("ca init: %s", stderr)
	}
	rootPEM, stderr, code := d.cli(t, "ca", "root")
	if code != 0 {
		t.Fatalf("ca root: %s", stderr)
	}
	cas := caCertificates(t, d)
	root := pemCerts(t, rootPEM)[0]
	signAndVerifyLeaf(t, d, dir, "hsm-prod.example.test", root)
	d.stop(t)

	// The CA keys and the master-key wrapping key are in the token,
	// sensitive and never extractable (checked with the server stopped:
	// nothing holds the token).
	checkCAKeysInToken(t, pin, cas)
	objs := parseListObjects(pkcs11Tool(t, pin, "--list-objects"))
	if !slices.ContainsFunc(objs, func(o p11Object) bool { return o.Class == "Secret Key Object" }) {
		t.Errorf("no secret (AES wrapping) key in the token: %+v", objs)
	}

	// Restart: the server unseals itself with the token.
	d = prod()
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	if st := status(d); !st.Initialized || st.Sealed {
		t.Fatalf("restarted HSM server status = %+v, want initialised and unsealed", st)
	}
	got, stderr, code := d.cli(t, "ca", "root")
	if code != 0 || got != rootPEM {
		t.Fatalf("the same CA does not answer after auto-unseal (code %d): %s", code, stderr)
	}
	signAndVerifyLeaf(t, d, dir, "hsm-prod-restarted.example.test", root)

	// Break-glass: sealed on request, the recovery shares unseal it.
	if _, stderr, code := d.cli(t, "operator", "seal"); code != 0 {
		t.Fatalf("seal: %s", stderr)
	}
	if _, stderr, code := d.cli(t, "ca", "root"); code != 1 || !strings.Contains(stderr, "sealed") {
		t.Fatalf("ca root while sealed: code %d %s", code, stderr)
	}
	for i, share := range initResp.Shares[1:] {
		if _, stderr, code := d.cli(t, "operator", "unseal", share); code != 0 {
			t.Fatalf("unseal with recovery share %d: %s", i+2, stderr)
		}
	}
	if st := status(d); st.Sealed {
		t.Fatalf("still sealed after the recovery threshold: %+v", st)
	}
	if got, _, code := d.cli(t, "ca", "root"); code != 0 || got != rootPEM {
		t.Fatal("the same CA does not answer after unsealing with recovery shares")
	}
	if strings.Contains(d.stderr.String(), pin) {
		t.Error("the server logged the token PIN")
	}
}
