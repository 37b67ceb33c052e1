package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/internal/oidcprovider"
)

// authjwtIssuer is a test JWT issuer: an RSA key whose JWKS is served over
// HTTPS by an httptest TLS server (its CA goes into jwks_ca_pem).
type authjwtIssuer struct {
	key     *rsa.PrivateKey
	kid     string
	srv     *httptest.Server
	caPEM   string
	fetches atomic.Int64
}

func authjwtNewIssuer(t *testing.T) *authjwtIssuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &authjwtIssuer{key: key, kid: "test-key-1"}
	is.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.fetches.Add(1)
		set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(is.srv.Close)
	is.caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw}))
	return is
}

// sign signs claims with the issuer's key (kid overrides the key id).
func (is *authjwtIssuer) sign(t *testing.T, claims map[string]any, kid string) string {
	t.Helper()
	if kid == "" {
		kid = is.kid
	}
	return authjwtSign(t, jose.RS256, is.key, kid, claims)
}

func authjwtSign(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// authjwtCLI runs the binary against d without the root token, with a
// token file of its own: what a pipeline or person has before login.
func authjwtCLI(t *testing.T, d *devServer, tokenFile string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN=", "SIGIL_CACERT="+d.exports["SIGIL_CACERT"],
		"SIGIL_TOKEN_FILE="+tokenFile)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run sigil %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func authjwtWrite(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type authjwtLogin struct {
	Token     string            `json:"token"`
	TokenID   string            `json:"token_id"`
	Policies  []string          `json:"policies"`
	ExpiresAt string            `json:"expires_at"`
	Identity  string            `json:"identity"`
	Metadata  map[string]string `json:"metadata"`
	TokenFile string            `json:"token_file"`
}

// authjwtSetup starts a dev server with a kv mount "secret", a jwt mount
// "jwt" trusting is over HTTPS, and returns both.
func authjwtSetup(t *testing.T, is *authjwtIssuer, issuer string, configYAML ...string) (*devServer, string) {
	t.Helper()
	dir := t.TempDir()
	var args []string
	if len(configYAML) > 0 {
		args = append(args, "--config", authjwtWrite(t, dir, "sigil.yaml", strings.Join(configYAML, "\n")))
	}
	d := startDev(t, filepath.Join(dir, "data"), args...)
	kvMust(t, d, "engine", "enable", "kv", "--mount", "secret")
	kvMust(t, d, "auth", "enable", "jwt", "--mount", "jwt")
	ca := authjwtWrite(t, dir, "jwks-ca.pem", is.caPEM)
	kvMust(t, d, "auth", "configure", "jwt", "jwks_url="+is.srv.URL+"/keys", "jwks_ca_pem=@"+ca, "bound_issuer="+issuer)
	return d, dir
}

// TestAuthJWTLogin: a JWT signed by a test issuer whose JWKS is served
// over HTTPS logs in to a role and gets exactly its policies, with the
// role's TTL, stored in a 0600 token file that the next command uses.
func TestAuthJWTLogin(t *testing.T) {
	is := authjwtNewIssuer(t)
	const iss = "https://ci.example.test"
	d, dir := authjwtSetup(t, is, iss)
	authjwtWrite(t, dir, "ci.yaml", "rules:\n  - path: \"secret/data/ci/*\"\n    capabilities: [read]\n")
	authjwtWrite(t, dir, "other.yaml", "rules:\n  - path: \"secret/data/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "ci-read", filepath.Join(dir, "ci.yaml"))
	kvMust(t, d, "policy", "write", "other", filepath.Join(dir, "other.yaml"))
	kvMust(t, d, "kv", "put", "secret/ci/deploy", "password=s3cret-ci")
	kvMust(t, d, "kv", "put", "secret/prod/db", "password=s3cret-prod")
	kvMust(t, d, "auth", "role", "write", "jwt/ci", "bound_audiences=sigil", `bound_claims={"repository":"acme/app","ref":"refs/heads/*"}`,
		"bound_claims_type=glob", "user_claim=sub", "token_policies=ci-read", "token_ttl=10m", "token_max_ttl=1h")

	now := time.Now()
	jwtFile := authjwtWrite(t, dir, "ci.jwt", is.sign(t, map[string]any{"iss": iss, "sub": "repo:acme/app:ref:refs/heads/main",
		"aud": "sigil", "repository": "acme/app", "ref": "refs/heads/main", "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}, ""))
	tokenFile := filepath.Join(dir, "home", "token")
	out, stderr, code := authjwtCLI(t, d, tokenFile, "login", "--method", "jwt", "--mount", "jwt", "--role", "ci", "--jwt", "@"+jwtFile, "--format", "json")
	if code != 0 {
		t.Fatalf("login: exit %d: %s", code, stderr)
	}
	var l authjwtLogin
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("login output %q: %v", out, err)
	}
	if !slices.Equal(l.Policies, []string{"ci-read"}) || !strings.HasPrefix(l.Token, "sgt_") {
		t.Fatalf("login gave policies %v token %q, want exactly [ci-read]", l.Policies, l.Token)
	}
	exp, err := time.Parse(time.RFC3339, l.ExpiresAt)
	if err != nil || exp.Before(now.Add(9*time.Minute)) || exp.After(now.Add(11*time.Minute)) {
		t.Fatalf("expires_at %s, want about 10m (token_ttl)", l.ExpiresAt)
	}
	st, err := os.Stat(tokenFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file %s: %v mode %v, want 0600", tokenFile, err, st.Mode())
	}
	if b, _ := os.ReadFile(tokenFile); strings.TrimSpace(string(b)) != l.Token {
		t.Fatalf("token file does not hold the token")
	}
	// The next command finds the token in the file.
	if out, stderr, code := authjwtCLI(t, d, tokenFile, "kv", "get", "secret/ci/deploy", "--field", "password"); code != 0 || strings.TrimSpace(out) != "s3cret-ci" {
		t.Fatalf("kv get with the login token: exit %d %q %s", code, out, stderr)
	}
	if _, stderr, code := authjwtCLI(t, d, tokenFile, "kv", "get", "secret/prod/db"); code == 0 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("kv get outside the role's policy: exit %d %s", code, stderr)
	}
	// The token is leased: revoking the lease ends it.
	kvMust(t, d, "token", "revoke", l.TokenID)
	if _, stderr, code := authjwtCLI(t, d, tokenFile, "kv", "get", "secret/ci/deploy"); code == 0 || !strings.Contains(stderr, "invalid or expired token") {
		t.Fatalf("kv get after revoke: exit %d %s", code, stderr)
	}
	// A role whose TTL exceeds its max is refused at write time; a token
	// never outlives the role's max.
	if _, stderr, code := d.cli(t, "auth", "role", "write", "jwt/bad", "bound_audiences=sigil", "token_ttl=2h", "token_max_ttl=1h", "token_policies=ci-read"); code == 0 || !strings.Contains(stderr, "token_ttl") {
		t.Fatalf("role with ttl > max: exit %d %s", code, stderr)
	}
	if out := kvMust(t, d, "auth", "list", "--format", "json"); !strings.Contains(out, `"type": "jwt"`) {
		t.Fatalf("auth list: %s", out)
	}
}

// TestAuthJWTKubernetes: a Kubernetes-shaped projected service-account
// token logs in; its namespace, mapped by claim_mappings, selects the kv
// path a templated policy grants.
func TestAuthJWTKubernetes(t *testing.T) {
	is := authjwtNewIssuer(t)
	const iss = "https://kubernetes.default.svc.cluster.local"
	d, dir := authjwtSetup(t, is, iss)
	authjwtWrite(t, dir, "ns.yaml", "rules:\n  - path: \"secret/data/{{identity.metadata.namespace}}/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "ns-kv", filepath.Join(dir, "ns.yaml"))
	kvMust(t, d, "kv", "put", "secret/team-a/db", "password=team-a-pw")
	kvMust(t, d, "kv", "put", "secret/team-b/db", "password=team-b-pw")
	kvMust(t, d, "auth", "role", "write", "jwt/app", "bound_audiences=sigil", `bound_claims={"sub":"system:serviceaccount:*:app"}`,
		"bound_claims_type=glob", `claim_mappings={"/kubernetes.io/namespace":"namespace","/kubernetes.io/serviceaccount/name":"service_account"}`,
		"token_policies=ns-kv", "token_max_ttl=15m")
	now := time.Now()
	sa := is.sign(t, map[string]any{"iss": iss, "sub": "system:serviceaccount:team-a:app", "aud": []string{"sigil"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": "team-a", "pod": map[string]any{"name": "app-7d4b9", "uid": "5d0c"},
			"serviceaccount": map[string]any{"name": "app", "uid": "8a1f"}}}, "")
	tokenFile := filepath.Join(dir, "token")
	out, stderr, code := authjwtCLI(t, d, tokenFile, "login", "--method", "jwt", "--mount", "jwt", "--role", "app", "--jwt", sa, "--format", "json")
	if code != 0 {
		t.Fatalf("login: exit %d: %s", code, stderr)
	}
	var l authjwtLogin
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatal(err)
	}
	if l.Metadata["namespace"] != "team-a" || l.Metadata["service_account"] != "app" || l.Identity != "system:serviceaccount:team-a:app" {
		t.Fatalf("login identity %q metadata %v", l.Identity, l.Metadata)
	}
	if exp, _ := time.Parse(time.RFC3339, l.ExpiresAt); exp.After(now.Add(16 * time.Minute)) {
		t.Fatalf("expires_at %s beyond token_max_ttl 15m", l.ExpiresAt)
	}
	if out, stderr, code := authjwtCLI(t, d, tokenFile, "kv", "get", "secret/team-a/db", "--field", "password"); code != 0 || strings.TrimSpace(out) != "team-a-pw" {
		t.Fatalf("own namespace: exit %d %q %s", code, out, stderr)
	}
	if _, stderr, code := authjwtCLI(t, d, tokenFile, "kv", "get", "secret/team-b/db"); code == 0 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("another namespace: exit %d %s", code, stderr)
	}
	// A service account of the wrong name does not match the bound claim.
	other := is.sign(t, map[string]any{"iss": iss, "sub": "system:serviceaccount:team-b:admin", "aud": "sigil",
		"exp": now.Add(10 * time.Minute).Unix(), "kubernetes.io": map[string]any{"namespace": "team-b"}}, "")
	if _, stderr, code := authjwtCLI(t, d, tokenFile, "login", "--method", "jwt", "--mount", "jwt", "--role", "app", "--jwt", other, "--no-store"); code == 0 || !strings.Contains(stderr, "bound_claims") {
		t.Fatalf("wrong service account: exit %d %s", code, stderr)
	}
	// Disabling the mount revokes the tokens its logins issued.
	if out := kvMust(t, d, "auth", "disable", "jwt", "--format", "json"); !strings.Contains(out, `"revoked_tokens": 1`) {
		t.Fatalf("auth disable: %s", out)
	}
	if _, stderr, code := authjwtCLI(t, d, tokenFile, "kv", "get", "secret/team-a/db"); code == 0 || !strings.Contains(stderr, "invalid or expired token") {
		t.Fatalf("token after its mount was disabled: exit %d %s", code, stderr)
	}
}

// TestAuthJWTOIDCBrowserLogin: `sigil login --method oidc` completes an
// authorization-code + PKCE login against a real OpenID provider
// (zitadel/oidc's op), with the browser played headlessly: the CLI prints
// the provider's URL, the "browser" posts the login form and follows the
// redirects to the CLI's localhost callback, and the CLI gets a token with
// the role's policies.
func TestAuthJWTOIDCBrowserLogin(t *testing.T) {
	listen := freeAddr(t)
	_, port, _ := strings.Cut(listen, ":")
	redirect := "http://localhost:" + port + "/oidc/callback"
	op, err := oidcprovider.Start("sigil-cli", redirect)
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	authjwtWrite(t, dir, "people.yaml", "rules:\n  - path: \"secret/data/people/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "people", filepath.Join(dir, "people.yaml"))
	kvMust(t, d, "auth", "enable", "oidc", "--mount", "oidc")
	ca := authjwtWrite(t, dir, "op-ca.pem", op.CAPEM)
	kvMust(t, d, "auth", "configure", "oidc", "oidc_discovery_url="+op.Issuer, "oidc_discovery_ca_pem=@"+ca,
		"oidc_client_id=sigil-cli", "default_role=people")
	kvMust(t, d, "auth", "role", "write", "oidc/people", "allowed_redirect_uris="+redirect, "user_claim=sub",
		"token_policies=people", "token_ttl=30m")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tokenFile := filepath.Join(dir, "token")
	cmd := exec.CommandContext(ctx, sigilBin, "login", "--method", "oidc", "--mount", "oidc", "--listen", listen, "--format", "json", "--timeout", "60s")
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN=", "SIGIL_CACERT="+d.exports["SIGIL_CACERT"], "SIGIL_TOKEN_FILE="+tokenFile)
	var out bytes.Buffer
	stderr := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = &out, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var authURL string
	for deadline := time.Now().Add(30 * time.Second); authURL == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for line := range strings.Lines(stderr.String()) {
			if l := strings.TrimSpace(line); strings.HasPrefix(l, op.Issuer) {
				authURL = l
			}
		}
	}
	if authURL == "" {
		_ = cmd.Process.Kill()
		t.Fatalf("no authorization URL printed: %s", stderr.String())
	}
	u, _ := url.Parse(authURL)
	if q := u.Query(); q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") == "" {
		t.Fatalf("authorization URL lacks PKCE S256, nonce or state: %s", authURL)
	}
	if _, err := op.Browse(ctx, authURL, op.Username, oidcprovider.Password); err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("browser login: %v; CLI stderr: %s", err, stderr.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sigil login --method oidc: %v: %s", err, stderr.String())
	}
	var l authjwtLogin
	if err := json.Unmarshal(out.Bytes(), &l); err != nil {
		t.Fatalf("login output %q: %v", out.String(), err)
	}
	if !slices.Equal(l.Policies, []string{"people"}) || l.Identity != oidcprovider.Subject {
		t.Fatalf("oidc login: policies %v identity %q, want [people] and %q", l.Policies, l.Identity, oidcprovider.Subject)
	}
	if out, stderr, code := authjwtCLI(t, d, tokenFile, "token", "lookup", "--format", "json"); code != 0 || !strings.Contains(out, "people") {
		t.Fatalf("token lookup with the stored oidc token: exit %d %s %s", code, out, stderr)
	}
	// An oidc mount does not take a bare JWT: only a callback it started.
	if _, stderr, code := authjwtCLI(t, d, tokenFile, "login", "--method", "jwt", "--mount", "oidc", "--jwt", "x.y.z", "--no-store"); code == 0 ||
		!strings.Contains(stderr, "state and code are required") {
		t.Fatalf("jwt login on an oidc mount: exit %d %s", code, stderr)
	}
}
