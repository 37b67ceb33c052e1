package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// uxRun runs the binary with exactly the given environment (plus PATH), so
// no SIGIL_* of the caller leaks in.
func uxRun(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run sigil %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// uxEnv is the dev server's exported environment.
func uxEnv(d *devServer) []string {
	return []string{"SIGIL_ADDR=" + d.exports["SIGIL_ADDR"], "SIGIL_TOKEN=" + d.exports["SIGIL_TOKEN"], "SIGIL_CACERT=" + d.exports["SIGIL_CACERT"]}
}

// TestCLIScripting covers what scripts rely on against a real dev server:
// JSON from every kind of command, --field, capped TTLs reported, the
// https:// address form, and status exiting 2 once sealed.
func TestCLIScripting(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	env := uxEnv(d)
	dir := t.TempDir()
	policy := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(policy, []byte("rules:\n  - path: \"ca/sign/server\"\n    capabilities: [create]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Every command answers --format json with a JSON document.
	jsonCmds := [][]string{
		{"version"},
		{"status"},
		{"engine", "enable", "tokens", "--mount", "svc-tokens"},
		{"role", "write", "svc-tokens/api", "format=opaque", "scopes=read", "ttl=10m", "max_ttl=1h"},
		{"role", "read", "svc-tokens/api"},
		{"engine", "list"},
		{"policy", "write", "p", policy},
		{"policy", "read", "p"},
		{"policy", "list"},
		{"policy", "test", "--policy", "p", "--path", "ca/sign/server", "--capability", "create"},
		{"ca", "root"},
		{"ca", "issue", "--spiffe-id", "spiffe://sigil.test/ux", "--key-out", filepath.Join(dir, "k"), "--cert-out", filepath.Join(dir, "c")},
		{"ca", "list"},
		{"ca", "issuers"},
		{"audit", "hash", "x"},
		{"audit", "verify"},
	}
	for _, args := range jsonCmds {
		out, stderr, code := uxRun(t, env, append(args, "--format", "json")...)
		var v any
		if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
			t.Errorf("%v --format json: exit %d, stdout %q, stderr %q", args, code, out, stderr)
		}
	}
	// policy test --exit-code: 0 when allowed, 2 when denied.
	if _, stderr, code := uxRun(t, env, "policy", "test", "--policy", "p", "--path", "ca/sign/server", "--capability", "create", "--exit-code"); code != 0 {
		t.Errorf("policy test (allowed) --exit-code: exit %d %s", code, stderr)
	}
	if out, _, code := uxRun(t, env, "policy", "test", "--policy", "p", "--path", "sys/rotate", "--capability", "update", "--exit-code"); code != 2 || out == "" {
		t.Errorf("policy test (denied) --exit-code: exit %d, explanation %q", code, out)
	}
	// The workload certificate issued above (the inventory also lists the
	// CA's own certificates, which ca revoke refuses).
	serial, _, code := uxRun(t, env, "ca", "list", "--name", "spiffe://sigil.test/ux", "--field", "serial", "--limit", "1")
	serial = strings.TrimSpace(serial)
	if code != 0 || serial == "" || strings.ContainsAny(serial, "\"{ ") {
		t.Fatalf("ca list --field serial = %q (exit %d)", serial, code)
	}
	out, stderr, code := uxRun(t, env, "ca", "revoke", serial, "--format", "json")
	if code != 0 || !strings.Contains(out, `"revoked": true`) {
		t.Errorf("ca revoke --format json: exit %d %q %q", code, out, stderr)
	}

	// --field prints one raw value: the secret itself.
	tok, stderr, code := uxRun(t, env, "creds", "svc-tokens/api", "--field", "token")
	if code != 0 || !strings.HasPrefix(tok, "sgl_") || strings.Count(tok, "\n") != 1 {
		t.Errorf("creds --field token = %q (exit %d, %s)", tok, code, stderr)
	}

	// A capped TTL is a warning on stderr and the capped value in JSON.
	out, stderr, code = uxRun(t, env, "creds", "svc-tokens/api", "--ttl", "100h", "--format", "json")
	var creds struct {
		LeaseDuration int64 `json:"lease_duration"`
		Requested     int64 `json:"requested_ttl_seconds"`
		Capped        bool  `json:"ttl_capped"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &creds) != nil {
		t.Fatalf("creds --ttl 100h: exit %d %q %q", code, out, stderr)
	}
	if !creds.Capped || creds.LeaseDuration != 3600 || creds.Requested != 100*3600 || !strings.Contains(stderr, "warning: --ttl 100h was capped by the server to 1h") {
		t.Errorf("creds --ttl 100h over max_ttl 1h: %+v, stderr %q", creds, stderr)
	}
	out, stderr, code = uxRun(t, env, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ux2", "--key-out", filepath.Join(dir, "k2"),
		"--cert-out", filepath.Join(dir, "c2"), "--ttl", "8000h", "--format", "json")
	var issued struct {
		TTL    int64 `json:"ttl_seconds"`
		Capped bool  `json:"ttl_capped"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &issued) != nil || !issued.Capped || issued.TTL >= 8000*3600 || !strings.Contains(stderr, "warning: --ttl 8000h was capped") {
		t.Errorf("ca issue --ttl 8000h: exit %d %q %q", code, out, stderr)
	}
	// Within the cap there is no warning.
	_, stderr, code = uxRun(t, env, "creds", "svc-tokens/api", "--ttl", "30m")
	if code != 0 || strings.Contains(stderr, "warning") {
		t.Errorf("creds --ttl 30m: exit %d, stderr %q", code, stderr)
	}

	// SIGIL_ADDR accepts https://HOST:PORT.
	httpsEnv := append([]string{"SIGIL_ADDR=https://" + d.grpcAddr}, env[1:]...)
	if out, stderr, code := uxRun(t, httpsEnv, "status", "--field", "sealed"); code != 0 || out != "false\n" {
		t.Errorf("status with SIGIL_ADDR=https://…: exit %d %q %q", code, out, stderr)
	}

}

// TestCLIStatusSealedExit2: like vault status, sigil status exits 2 on a
// sealed server and still prints its state.
func TestCLIStatusSealedExit2(t *testing.T) {
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	env := []string{"SIGIL_ADDR=" + d.grpcAddr, "SIGIL_CACERT=" + listenerCA}
	out, stderr, code := uxRun(t, env, "status", "--format", "json")
	if code != 2 || !strings.Contains(out, `"sealed": true`) {
		t.Errorf("status when sealed: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	out, _, code = uxRun(t, env, "status")
	if code != 2 || !strings.Contains(out, "Sealed:        true") {
		t.Errorf("status (text) when sealed: exit %d, stdout %q", code, out)
	}
}

// TestCLIConnectionErrors runs the binary against the dev server's other
// ports and a closed one: each message names the address and the fix.
func TestCLIConnectionErrors(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	closed := freeAddr(t)
	tests := []struct {
		name string
		env  []string
		code int
		want string
	}{
		{"nothing listening", []string{"SIGIL_ADDR=" + closed}, 1, "no Sigil server at " + closed + " (SIGIL_ADDR)"},
		{"the HTTPS port", []string{"SIGIL_ADDR=" + d.httpsAddr, "SIGIL_CACERT=" + d.caPath}, 1, "that looks like the HTTPS port"},
		{"no CA", []string{"SIGIL_ADDR=" + d.grpcAddr, "HOME=" + t.TempDir()}, 1, "set SIGIL_CACERT"},
		{"no port", []string{"SIGIL_ADDR=localhost"}, 2, `SIGIL_ADDR "localhost" has no port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := uxRun(t, tt.env, "status")
			if code != tt.code || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d (want %d), stderr %q lacks %q", code, tt.code, stderr, tt.want)
			}
		})
	}
}

// TestCLIBootstrap pins the root by fingerprint and then talks to the
// server with no SIGIL_CACERT; a wrong fingerprint pins nothing.
func TestCLIBootstrap(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	fp, stderr, code := uxRun(t, uxEnv(d), "ca", "root", "--field", "fingerprint_sha256")
	fp = strings.TrimSpace(fp)
	if code != 0 || len(fp) != 64 {
		t.Fatalf("ca root --field fingerprint_sha256 = %q (exit %d): %s", fp, code, stderr)
	}
	home := t.TempDir()
	pinned := filepath.Join(home, ".config", "sigil", "root.pem")
	bad := strings.Repeat("0", 64)
	_, stderr, code = uxRun(t, []string{"HOME=" + home}, "ca", "bootstrap", "--ca-url", "https://"+d.httpsAddr, "--fingerprint", bad)
	if code != 1 || !strings.Contains(stderr, "refusing to trust it") {
		t.Errorf("bootstrap with a wrong fingerprint: exit %d, %q", code, stderr)
	}
	if _, err := os.Stat(pinned); err == nil {
		t.Fatal("a wrong fingerprint still pinned a root")
	}
	// Colons and upper case, as openssl prints it, are accepted.
	var colon []string
	for i := 0; i < len(fp); i += 2 {
		colon = append(colon, strings.ToUpper(fp[i:i+2]))
	}
	out, stderr, code := uxRun(t, []string{"HOME=" + home}, "ca", "bootstrap", "--ca-url", "https://"+d.httpsAddr, "--fingerprint", strings.Join(colon, ":"))
	if code != 0 || out != "export SIGIL_CACERT="+pinned+"\n" {
		t.Fatalf("bootstrap: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	want, _ := os.ReadFile(d.caPath)
	if got, _ := os.ReadFile(pinned); string(got) != string(want) {
		t.Errorf("pinned root differs from the server's ca.pem")
	}
	out, stderr, code = uxRun(t, []string{"HOME=" + home, "SIGIL_ADDR=" + d.grpcAddr, "SIGIL_TOKEN=" + d.exports["SIGIL_TOKEN"]}, "status", "--field", "initialized")
	if code != 0 || out != "true\n" {
		t.Errorf("status with the pinned root and no SIGIL_CACERT: exit %d %q %q", code, out, stderr)
	}
}

// TestCLIBashCompletion sources the bash script in a real bash and asks
// it to complete, as the shell would on TAB.
func TestCLIBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed: apt-get install bash")
	}
	script := `source <(sigil completion bash)
COMP_WORDS=(sigil ca rev); COMP_CWORD=2; _sigil; echo "${COMPREPLY[*]}"
COMP_WORDS=(sigil ca sign --pro); COMP_CWORD=3; _sigil; echo "${COMPREPLY[*]}"`
	cmd := exec.Command(bash, "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(sigilBin)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "revoke\n--profile\n" {
		t.Errorf("bash completion: %v\n%q", err, out)
	}
}

// TestCLIZshFishCompletion loads the zsh and fish scripts in real shells
// and asks them to complete. fish runs its own completion engine
// (complete -C); zsh's compadd and compdef only exist inside a completion
// widget, so the test stands in for those two builtins and checks what the
// script hands them.
func TestCLIZshFishCompletion(t *testing.T) {
	const want = "revoke\n--profile\n"
	for _, tc := range []struct{ shell, script string }{
		{"zsh", `compdef() { :; }
compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }
source <(sigil completion zsh)
words=(sigil ca rev); CURRENT=3; _sigil
words=(sigil ca sign --pro); CURRENT=4; _sigil`},
		{"fish", `sigil completion fish | source
complete -C "sigil ca rev"
complete -C "sigil ca sign --pro"`},
	} {
		t.Run(tc.shell, func(t *testing.T) {
			sh, err := exec.LookPath(tc.shell)
			if err != nil {
				t.Fatalf("%s is needed (scripts/deps.sh installs it): %v", tc.shell, err)
			}
			cmd := exec.Command(sh, "-c", tc.script)
			cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(sigilBin)+":"+os.Getenv("PATH"), "HOME="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil || string(out) != want {
				t.Errorf("%s completion: %v\n%q, want %q", tc.shell, err, out, want)
			}
		})
	}
}
