package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// k8sIssuer is the cluster's service-account issuer in these tests.
const k8sIssuer = "https://kubernetes.default.svc.cluster.local"

// k8sSetup starts a dev server whose jwt mount "k8s" trusts the test
// issuer's JWKS over HTTPS, with role "app" (token_ttl/token_max_ttl as
// given, exp checked without leeway so a stale JWT file is refused) whose
// policy grants secret/data/{{identity.metadata.namespace}}/*.
func k8sSetup(t *testing.T, is *authjwtIssuer, ttl, maxTTL string) (*devServer, string) {
	t.Helper()
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	kvMust(t, d, "engine", "enable", "kv", "--mount", "secret")
	kvMust(t, d, "auth", "enable", "jwt", "--mount", "k8s")
	ca := authjwtWrite(t, dir, "jwks-ca.pem", is.caPEM)
	kvMust(t, d, "auth", "configure", "k8s", "jwks_url="+is.srv.URL+"/keys", "jwks_ca_pem=@"+ca, "bound_issuer="+k8sIssuer)
	authjwtWrite(t, dir, "ns.yaml", "rules:\n  - path: \"secret/data/{{identity.metadata.namespace}}/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "ns-kv", filepath.Join(dir, "ns.yaml"))
	kvMust(t, d, "auth", "role", "write", "k8s/app", "bound_audiences=sigil", `bound_claims={"sub":"system:serviceaccount:*:app"}`,
		"bound_claims_type=glob", `claim_mappings={"/kubernetes.io/namespace":"namespace"}`,
		"token_policies=ns-kv", "token_ttl="+ttl, "token_max_ttl="+maxTTL, "expiration_leeway=0")
	return d, dir
}

// k8sSAToken mints a projected service-account token for namespace/app,
// valid for life.
func k8sSAToken(t *testing.T, is *authjwtIssuer, namespace string, life time.Duration) string {
	t.Helper()
	now := time.Now()
	return is.sign(t, map[string]any{"iss": k8sIssuer, "sub": "system:serviceaccount:" + namespace + ":app", "aud": []string{"sigil"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(life).Unix(),
		"kubernetes.io": map[string]any{"namespace": namespace, "pod": map[string]any{"name": "app-7d4b9", "uid": "5d0c"},
			"serviceaccount": map[string]any{"name": "app", "uid": "8a1f"}}}, "")
}

// k8sEnv is the environment of a pod: the server's address and CA, no
// SIGIL_TOKEN, no token file, an empty HOME of its own, plus extra.
func k8sEnv(d *devServer, home string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGIL_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	env = append(env, "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_CACERT="+d.exports["SIGIL_CACERT"], "HOME="+home)
	return append(env, extra...)
}

// k8sExec runs `sigil exec --login-jwt FILE ...` in a pod-like
// environment and returns stdout, stderr and the exit code.
func k8sExec(t *testing.T, d *devServer, home, work, jwtFile string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, append([]string{"exec", "--login-jwt", jwtFile, "--login-mount", "k8s", "--login-role", "app"}, args...)...)
	cmd.Env = k8sEnv(d, home)
	cmd.Dir = work
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run sigil exec: %v", err)
	}
	return out.String(), errb.String(), code
}

// TestK8sExecLogin (issue 17: "the agent can log in with its pod's
// token"; a pipeline "gets secrets with no stored credential"): `sigil
// exec --login-jwt` logs in with a service-account token file, and the
// command sees the kv secret of its namespace (a templated policy path)
// with no SIGIL_TOKEN given, none passed to the command, nothing written
// to disk and the JWT never logged; a token of another namespace cannot
// read it; a bad JWT is refused with a clear error.
func TestK8sExecLogin(t *testing.T) {
	is := authjwtNewIssuer(t)
	d, dir := k8sSetup(t, is, "5m", "15m")
	kvMust(t, d, "kv", "put", "secret/team-a/db", "password=team-a-pw")
	kvMust(t, d, "kv", "put", "secret/team-b/db", "password=team-b-pw")
	saDir := t.TempDir()
	jwtA := k8sSAToken(t, is, "team-a", 10*time.Minute)
	fileA := authjwtWrite(t, saDir, "token-a", jwtA+"\n")
	jwtB := k8sSAToken(t, is, "team-b", 10*time.Minute)
	fileB := authjwtWrite(t, saDir, "token-b", jwtB)
	home, work := t.TempDir(), t.TempDir()
	before := renderSnapshot(t, home, work, saDir, filepath.Join(dir, "data"))
	const script = `echo "secret=$SECRET"; echo "token=${SIGIL_TOKEN:-none}"; echo "file=${SIGIL_TOKEN_FILE:-none}"`
	secretEnv := `SECRET={{ kv "secret/team-a/db" "password" }}`

	out, stderr, code := k8sExec(t, d, home, work, fileA, "--log-level", "debug", "--env", secretEnv, "--", "sh", "-c", script)
	if code != 0 || !strings.Contains(out, "secret=team-a-pw\n") {
		t.Fatalf("exec in team-a: exit %d stdout %q stderr %q", code, out, stderr)
	}
	if !strings.Contains(out, "token=none\n") || !strings.Contains(out, "file=none\n") {
		t.Errorf("the command was given a Sigil token: %q", out)
	}
	if !strings.Contains(stderr, "logged in") || strings.Contains(stderr, jwtA) || strings.Contains(stderr, "sgt_") {
		t.Errorf("exec log: want a login logged without the JWT or the token: %q", stderr)
	}
	// Nothing was written: no token file in HOME, nothing in the working
	// directory, the JWT file untouched.
	after := renderSnapshot(t, home, work, saDir)
	for p, m := range after {
		if before[p] != m {
			t.Errorf("sigil exec wrote %s", p)
		}
	}

	// team-b's service account logs in to the same role but its policy
	// path is its own namespace: team-a's secret is refused, its own is not.
	if out, stderr, code := k8sExec(t, d, home, work, fileB, "--env", secretEnv, "--", "sh", "-c", script); code == 0 ||
		strings.Contains(out, "team-a-pw") || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("exec in team-b reading team-a: exit %d stdout %q stderr %q", code, out, stderr)
	}
	if out, stderr, code := k8sExec(t, d, home, work, fileB, "--env", `SECRET={{ kv "secret/team-b/db" "password" }}`, "--", "sh", "-c", script); code != 0 ||
		!strings.Contains(out, "secret=team-b-pw\n") {
		t.Fatalf("exec in team-b reading its own: exit %d stdout %q stderr %q", code, out, stderr)
	}

	// A refused login is a clear error at start, without the JWT.
	expired := k8sSAToken(t, is, "team-a", -time.Minute)
	fileX := authjwtWrite(t, saDir, "token-expired", expired)
	if out, stderr, code := k8sExec(t, d, home, work, fileX, "--env", secretEnv, "--", "sh", "-c", script); code == 0 || out != "" ||
		!strings.Contains(stderr, "jwt expired") || strings.Contains(stderr, expired) {
		t.Fatalf("exec with an expired JWT: exit %d stdout %q stderr %q", code, out, stderr)
	}
	if _, stderr, code := k8sExec(t, d, home, work, filepath.Join(saDir, "missing"), "--", "true"); code == 0 || !strings.Contains(stderr, "--login-jwt") {
		t.Fatalf("exec with a missing JWT file: exit %d stderr %q", code, stderr)
	}
}

// TestK8sRenderAcrossExpiry: `sigil agent render` logging in with a
// service-account token (SIGIL_LOGIN_* environment) keeps rendering past
// its first token's max TTL: it renews the token, then logs in again by
// re-reading the JWT file, which the kubelet has rotated meanwhile (the
// first JWT has expired by then, so only the new file's can log in), and
// a secret changed after the first token is dead is rendered.
func TestK8sRenderAcrossExpiry(t *testing.T) {
	is := authjwtNewIssuer(t)
	d, _ := k8sSetup(t, is, "4s", "8s")
	kvMust(t, d, "kv", "put", "secret/team-a/api", "key=v1")
	saDir := t.TempDir()
	jwt1 := k8sSAToken(t, is, "team-a", 4*time.Second)
	jwtFile := authjwtWrite(t, saDir, "token", jwt1)
	out := renderShmDir(t)
	dest := filepath.Join(out, "api.key")
	cfgPath := filepath.Join(t.TempDir(), "agent.yaml")
	cfg := "kv_refresh: 1s\ntemplates:\n  - contents: '{{ kv \"secret/team-a/api\" \"key\" }}'\n    destination: " + dest + "\n    mode: 0400\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	r := &renderChild{child: newChild(exec.Command(sigilBin, "agent", "render", "--config", cfgPath, "--log-level", "debug")), stderr: &syncBuffer{}}
	r.cmd.Env = k8sEnv(d, t.TempDir(), "SIGIL_LOGIN_JWT_FILE="+jwtFile, "SIGIL_LOGIN_MOUNT=k8s", "SIGIL_LOGIN_ROLE=app")
	r.cmd.Stdout, r.cmd.Stderr = r.stderr, r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.watch(t)
	waitFor(t, 20*time.Second, "first render", func() bool { return renderRead(dest) == "v1" })
	// The kubelet rotates the projected token (written aside and renamed,
	// as it does).
	jwt2 := k8sSAToken(t, is, "team-a", 10*time.Minute)
	tmp := authjwtWrite(t, saDir, "token.new", jwt2)
	if err := os.Rename(tmp, jwtFile); err != nil {
		t.Fatal(err)
	}
	// Past the first token's max TTL (8s) and the first JWT's expiry, the
	// daemon must be on a new login's token to read the changed secret.
	time.Sleep(time.Until(t0.Add(10 * time.Second)))
	kvMust(t, d, "kv", "put", "secret/team-a/api", "key=v2")
	waitFor(t, 20*time.Second, "render after the first token's max TTL", func() bool { return renderRead(dest) == "v2" })
	select {
	case err := <-r.done:
		t.Fatalf("sigil agent render exited: %v\n%s", err, r.stderr.String())
	default:
	}
	logs := r.stderr.String()
	if n := strings.Count(logs, "msg=\"logged in\""); n < 2 {
		t.Errorf("want a second login after the max TTL, got %d logins:\n%s", n, logs)
	}
	if !strings.Contains(logs, "token renewed") {
		t.Errorf("want a renewal before the max TTL:\n%s", logs)
	}
	if strings.Contains(logs, jwt1) || strings.Contains(logs, jwt2) || strings.Contains(logs, "sgt_") {
		t.Errorf("the log holds a JWT or a token:\n%s", logs)
	}
	if strings.Contains(logs, "login failed") {
		t.Errorf("a login failed (the JWT file was not re-read?):\n%s", logs)
	}
}
