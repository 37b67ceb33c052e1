package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// kvMust runs a CLI command that must succeed and returns its stdout.
func kvMust(t *testing.T, d *devServer, args ...string) string {
	t.Helper()
	out, stderr, code := d.cli(t, args...)
	if code != 0 {
		t.Fatalf("sigil %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

// kvFail runs a CLI command that must fail with code and a message
// containing each of want.
func kvFail(t *testing.T, d *devServer, code int, want []string, args ...string) {
	t.Helper()
	_, stderr, got := d.cli(t, args...)
	if got != code {
		t.Fatalf("sigil %s: exit %d, want %d; stderr: %s", strings.Join(args, " "), got, code, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Fatalf("sigil %s: stderr %q lacks %q", strings.Join(args, " "), stderr, w)
		}
	}
}

func kvOpenSSL(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %v: %v\n%s", args, err, out)
	}
}

// kvX25519 makes an X25519 key pair with openssl and returns the private
// and public key files.
func kvX25519(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	priv, pub := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	kvOpenSSL(t, "genpkey", "-algorithm", "X25519", "-out", priv)
	kvOpenSSL(t, "pkey", "-in", priv, "-pubout", "-out", pub)
	return priv, pub
}

// TestKV runs the "done means" list against one dev server on
// SQLite: a binary round trip, max_versions, CAS, destroy, recipient
// sealing, concurrent CAS writers, bad input and a canary search.
func TestKV(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	// The audit file is outside the data directory, so the canary search
	// covers it separately.
	auditPath := filepath.Join(dir, "audit.jsonl")
	cfg := filepath.Join(dir, "sigil.yaml")
	if err := os.WriteFile(cfg, []byte("audit:\n  file: "+auditPath+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, dataDir, "--config", cfg)
	kvMust(t, d, "engine", "enable", "kv", "--mount", "kv")

	canary := "kv-canary-" + hex.EncodeToString(kvRandom(t, 16))
	kvMust(t, d, "kv", "put", "kv/canary/db", "password="+canary, "user=app")

	t.Run("BinaryRoundTrip", func(t *testing.T) {
		blob := kvRandom(t, 100<<10)
		file := filepath.Join(dir, "blob.bin")
		if err := os.WriteFile(file, blob, 0o600); err != nil {
			t.Fatal(err)
		}
		kvMust(t, d, "kv", "put", "kv/bin/keystore", "p12=@"+file, "note=binary")
		out := kvMust(t, d, "kv", "get", "kv/bin/keystore", "--field", "p12")
		if sha256.Sum256([]byte(out)) != sha256.Sum256(blob) {
			t.Fatalf("--field p12 returned %d bytes that differ from the %d put", len(out), len(blob))
		}
		// stdin works the same way.
		_, stderr, code := d.cliStdin(t, string(blob[:4096]), "kv", "put", "kv/bin/stdin", "v=-")
		if code != 0 {
			t.Fatalf("put from stdin: %s", stderr)
		}
		if out := kvMust(t, d, "kv", "get", "kv/bin/stdin", "--field", "v"); out != string(blob[:4096]) {
			t.Fatal("stdin value did not round-trip")
		}
		// JSON marks binary values as base64.
		var view struct {
			Data       map[string]string `json:"data"`
			DataBase64 map[string]string `json:"data_base64"`
		}
		if err := json.Unmarshal([]byte(kvMust(t, d, "kv", "get", "kv/bin/keystore", "--format", "json")), &view); err != nil {
			t.Fatal(err)
		}
		if b, _ := base64.StdEncoding.DecodeString(view.DataBase64["p12"]); !bytes.Equal(b, blob) || view.Data["note"] != "binary" {
			t.Fatalf("JSON view lost the value: %d bytes, note %q", len(b), view.Data["note"])
		}
	})

	t.Run("MaxVersions", func(t *testing.T) {
		kvMust(t, d, "kv", "metadata", "put", "kv/ver", "max_versions=5")
		for i := 1; i <= 10; i++ {
			kvMust(t, d, "kv", "put", "kv/ver", fmt.Sprintf("n=%d", i))
		}
		var md struct {
			Current  int              `json:"current_version"`
			Oldest   int              `json:"oldest_version"`
			Versions []map[string]any `json:"versions"`
		}
		if err := json.Unmarshal([]byte(kvMust(t, d, "kv", "metadata", "get", "kv/ver", "--format", "json")), &md); err != nil {
			t.Fatal(err)
		}
		if len(md.Versions) != 5 || md.Oldest != 6 || md.Current != 10 {
			t.Fatalf("after ten puts with max_versions=5: %d versions, oldest %d, current %d", len(md.Versions), md.Oldest, md.Current)
		}
		if out := kvMust(t, d, "kv", "get", "kv/ver", "--version", "6", "--field", "n"); out != "6" {
			t.Fatalf("version 6 = %q", out)
		}
		kvFail(t, d, 1, []string{"NotFound", "version 5", "pruned"}, "kv", "get", "kv/ver", "--version", "5")
		// Rollback makes version 6's value current again.
		kvMust(t, d, "kv", "rollback", "kv/ver", "--version", "6")
		if out := kvMust(t, d, "kv", "get", "kv/ver", "--field", "n"); out != "6" {
			t.Fatalf("after rollback = %q", out)
		}
	})

	t.Run("StaleCAS", func(t *testing.T) {
		kvMust(t, d, "kv", "put", "kv/cas", "a=1", "--cas", "0")
		kvMust(t, d, "kv", "put", "kv/cas", "a=2", "--cas", "1")
		kvFail(t, d, 1, []string{"FailedPrecondition", "check-and-set", "current version 2"}, "kv", "put", "kv/cas", "a=3", "--cas", "1")
		kvFail(t, d, 1, []string{"FailedPrecondition"}, "kv", "put", "kv/cas", "a=3", "--cas", "0")
		if out := kvMust(t, d, "kv", "get", "kv/cas", "--field", "a"); out != "2" {
			t.Fatalf("a stale CAS write changed the value to %q", out)
		}
		kvMust(t, d, "kv", "patch", "kv/cas", "b=x", "--cas", "2")
		if out := kvMust(t, d, "kv", "get", "kv/cas", "--field", "a"); out != "2" {
			t.Fatalf("patch lost field a: %q", out)
		}
	})

	t.Run("DeleteUndelete", func(t *testing.T) {
		kvMust(t, d, "kv", "put", "kv/soft", "a=1")
		kvMust(t, d, "kv", "delete", "kv/soft")
		kvFail(t, d, 1, []string{"NotFound", "deleted"}, "kv", "get", "kv/soft")
		kvMust(t, d, "kv", "undelete", "kv/soft", "--versions", "1")
		if out := kvMust(t, d, "kv", "get", "kv/soft", "--field", "a"); out != "1" {
			t.Fatalf("after undelete = %q", out)
		}
		out := kvMust(t, d, "kv", "list", "kv/")
		for _, want := range []string{"bin/", "canary/", "cas", "soft", "ver"} {
			if !strings.Contains(out, want+"\n") {
				t.Fatalf("kv list lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("RecipientSealed", func(t *testing.T) {
		value := "shared-" + hex.EncodeToString(kvRandom(t, 8))
		kvMust(t, d, "kv", "put", "kv/shared", "token="+value)
		priv, pub := kvX25519(t, dir, "recipient")
		other, _ := kvX25519(t, dir, "other")
		sealed := kvMust(t, d, "kv", "get", "kv/shared", "--recipient-key", pub)
		if strings.Contains(sealed, value) || strings.Contains(sealed, base64.StdEncoding.EncodeToString([]byte(value))) {
			t.Fatal("the sealed output shows the value")
		}
		file := filepath.Join(dir, "sealed.json")
		if err := os.WriteFile(file, []byte(sealed), 0o600); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := d.cli(t, "envelope", "open", "--key", priv, "--field", "token", file)
		if code != 0 || out != value {
			t.Fatalf("open with the recipient's key: %q, exit %d: %s", out, code, stderr)
		}
		kvFail(t, d, 1, []string{"open the envelope"}, "envelope", "open", "--key", other, file)
		// Bound to its path: claiming another id fails.
		kvFail(t, d, 1, []string{"open the envelope"}, "envelope", "open", "--key", priv, "--id", "kv:kv/data/other", file)
		// A private key where the public one belongs is refused clearly.
		kvFail(t, d, 1, []string{"PUBLIC KEY", "pubout"}, "kv", "get", "kv/shared", "--recipient-key", priv)
		junk := filepath.Join(dir, "junk.pem")
		os.WriteFile(junk, []byte("not a key"), 0o600)
		kvFail(t, d, 1, []string{"no PEM"}, "kv", "get", "kv/shared", "--recipient-key", junk)
	})

	var destroyedCipher []byte
	t.Run("Destroy", func(t *testing.T) {
		kvMust(t, d, "kv", "put", "kv/gone", "a=1")
		kvMust(t, d, "kv", "put", "kv/gone", "a=2")
		db := openSQLite(t, filepath.Join(dataDir, "sigil.db"))
		if err := db.QueryRow(`SELECT sealed FROM kv_versions WHERE mount = 'kv' AND path = 'gone' AND version = 1`).Scan(&destroyedCipher); err != nil || len(destroyedCipher) == 0 {
			t.Fatalf("version 1 before destroy: %v (%d bytes)", err, len(destroyedCipher))
		}
		kvMust(t, d, "kv", "destroy", "kv/gone", "--versions", "1")
		var sealed []byte
		var destroyed bool
		if err := db.QueryRow(`SELECT sealed, destroyed FROM kv_versions WHERE mount = 'kv' AND path = 'gone' AND version = 1`).Scan(&sealed, &destroyed); err != nil {
			t.Fatal(err)
		}
		if sealed != nil || !destroyed {
			t.Fatalf("after destroy the row holds %d bytes of ciphertext (destroyed %v)", len(sealed), destroyed)
		}
		kvFail(t, d, 1, []string{"NotFound", "destroyed"}, "kv", "get", "kv/gone", "--version", "1")
		if out := kvMust(t, d, "kv", "get", "kv/gone", "--field", "a"); out != "2" {
			t.Fatalf("destroying version 1 changed version 2: %q", out)
		}
	})

	t.Run("ConcurrentCAS", func(t *testing.T) {
		kvMust(t, d, "kv", "put", "kv/counter", "init=1")
		const writers = 16
		var wg sync.WaitGroup
		errs := make(chan string, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for attempt := 0; attempt < 100; attempt++ {
					out, stderr, code := d.cli(t, "kv", "get", "kv/counter", "--format", "json")
					if code != 0 {
						errs <- stderr
						return
					}
					var v struct {
						Data    map[string]string `json:"data"`
						Version int               `json:"version"`
					}
					if err := json.Unmarshal([]byte(out), &v); err != nil {
						errs <- err.Error()
						return
					}
					args := []string{"kv", "put", "kv/counter", "--cas", fmt.Sprint(v.Version), fmt.Sprintf("w%d=done", w)}
					for k, val := range v.Data {
						args = append(args, k+"="+val)
					}
					_, stderr, code = d.cli(t, args...)
					if code == 0 {
						return
					}
					if !strings.Contains(stderr, "check-and-set") {
						errs <- stderr
						return
					}
				}
				errs <- fmt.Sprintf("writer %d never won", w)
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
		var v struct {
			Data    map[string]string `json:"data"`
			Version int               `json:"version"`
		}
		if err := json.Unmarshal([]byte(kvMust(t, d, "kv", "get", "kv/counter", "--format", "json")), &v); err != nil {
			t.Fatal(err)
		}
		if v.Version != writers+1 || len(v.Data) != writers+1 {
			t.Fatalf("16 CAS writers: version %d with %d fields, want %d and %d: an update was lost", v.Version, len(v.Data), writers+1, writers+1)
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		kvFail(t, d, 1, []string{"InvalidArgument", `".."`}, "kv", "put", "kv/a/../b", "x=1")
		kvFail(t, d, 1, []string{"InvalidArgument", "empty"}, "kv", "put", "kv/a//b", "x=1")
		kvFail(t, d, 2, []string{"missing argument"}, "kv", "put", "kv/nofields")
		kvFail(t, d, 2, []string{"NAME=VALUE"}, "kv", "put", "kv/x", "novalue")
		big := filepath.Join(dir, "big.bin")
		os.WriteFile(big, make([]byte, 1<<20+1), 0o600)
		kvFail(t, d, 1, []string{"InvalidArgument", "too large", "1048576"}, "kv", "put", "kv/big", "v=@"+big)
		kvFail(t, d, 1, []string{"NotFound"}, "kv", "get", "kv/big")
		kvFail(t, d, 1, []string{"NotFound"}, "kv", "get", "kv/never")
		kvFail(t, d, 2, []string{"--versions"}, "kv", "destroy", "kv/cas")
		kvFail(t, d, 1, []string{"no field", "a, b"}, "kv", "get", "kv/cas", "--field", "nope")
		kvFail(t, d, 1, []string{"InvalidArgument", "max_versions"}, "kv", "metadata", "put", "kv/cas", "max_versions=5000")
	})

	// Rewrap covers kv values: rotate, rewrap, and every value still reads.
	kvMust(t, d, "operator", "rotate")
	kvMust(t, d, "operator", "rewrap")
	if out := kvMust(t, d, "kv", "get", "kv/canary/db", "--field", "password"); out != canary {
		t.Fatalf("canary after rewrap = %q", out)
	}

	// The canary appears nowhere the server wrote: the data directory
	// (database, WAL) while running and after a clean stop, and the log.
	needles := secretNeedles("the kv canary", []byte(canary))
	if destroyedCipher != nil {
		needles = append(needles, needle{"a destroyed version's ciphertext", destroyedCipher})
	}
	if n := scanDir(t, dataDir, needles[:len(secretNeedles("", []byte("x")))]); n == 0 {
		t.Fatal("scanned no files")
	}
	// The audit records the writes and reads of the canary by field name
	// with the HMAC of its value, never the value.
	kvAuditCheck(t, d, auditPath, canary)
	d.stop(t)
	scanDir(t, dataDir, needles)
	scan(t, "the server log", []byte(d.stderr.String()), needles)
	auditFile, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	scan(t, "the audit file", auditFile, needles)
	// Control: the scan finds what is there (the plaintext path is stored).
	found := false
	filepath.WalkDir(dataDir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("canary/db")) {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Fatal("control: the secret's path is not found on disk either, so the scan proves nothing")
	}
}

// kvAuditCheck finds, in the audit file, the put and the get of
// kv/canary/db, each naming the field "password" with the HMAC the
// server computes for the canary (sigil audit hash).
func kvAuditCheck(t *testing.T, d *devServer, auditPath, canary string) {
	t.Helper()
	mac := strings.TrimSpace(kvMust(t, d, "audit", "hash", canary))
	if !strings.HasPrefix(mac, "hmac-sha256:") {
		t.Fatalf("audit hash printed %q", mac)
	}
	b, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var rec struct {
			Operation string            `json:"operation"`
			Request   map[string]string `json:"request"`
			Response  map[string]string `json:"response"`
		}
		if len(line) == 0 || json.Unmarshal(line, &rec) != nil {
			continue
		}
		switch {
		case strings.HasSuffix(rec.Operation, "/Put") && rec.Request["path"] == "canary/db":
			if rec.Request["data.password"] != mac || rec.Request["data.user"] == "app" || rec.Request["data.user"] == "" {
				t.Fatalf("put audit record: %s", line)
			}
			seen["put"] = true
		case strings.HasSuffix(rec.Operation, "/Get") && rec.Request["path"] == "canary/db":
			if rec.Response["data.password"] != mac || rec.Response["version"] == "" {
				t.Fatalf("get audit record: %s", line)
			}
			seen["get"] = true
		}
	}
	if !seen["put"] || !seen["get"] {
		t.Fatalf("audit file lacks the canary's put or get record (seen %v)", seen)
	}
	kvMust(t, d, "audit", "verify")
}

func kvRandom(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKVTemplatedPolicy: one policy with {{identity}} gives each workload
// its own namespace: workload A reads its path and is refused B's, and
// the reverse.
func TestKVTemplatedPolicy(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	kvMust(t, d, "engine", "enable", "kv", "--mount", "kv")
	pol := filepath.Join(dir, "apps.yaml")
	os.WriteFile(pol, []byte(`rules:
  - path: "kv/data/apps/{{identity}}/*"
    capabilities: [read, update]
bindings:
  spiffe_ids: ["spiffe://sigil.test/ns/kvapps/*"]
`), 0o600)
	kvMust(t, d, "policy", "write", "apps", pol)
	type workload struct{ name, cert, key, ns string }
	var ws []workload
	for _, n := range []string{"a", "b"} {
		w := workload{name: n, cert: filepath.Join(dir, n+".pem"), key: filepath.Join(dir, n+".key"), ns: "spiffe:sigil.test:ns:kvapps:" + n}
		kvMust(t, d, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/kvapps/"+n, "--key-out", w.key, "--cert-out", w.cert)
		kvMust(t, d, "kv", "put", "kv/apps/"+w.ns+"/db", "password=secret-of-"+n)
		ws = append(ws, w)
	}
	as := func(w workload, args ...string) (string, string, int) {
		saved := d.exports["SIGIL_TOKEN"]
		d.exports["SIGIL_TOKEN"] = ""
		defer func() { d.exports["SIGIL_TOKEN"] = saved }()
		return d.cli(t, append(args, "--client-cert", w.cert, "--client-key", w.key)...)
	}
	for i, w := range ws {
		other := ws[1-i]
		out, stderr, code := as(w, "kv", "get", "kv/apps/"+w.ns+"/db", "--field", "password")
		if code != 0 || out != "secret-of-"+w.name {
			t.Fatalf("workload %s reading its own path: %q, exit %d: %s", w.name, out, code, stderr)
		}
		if _, stderr, code := as(w, "kv", "put", "kv/apps/"+w.ns+"/db", "password=rotated-"+w.name); code != 0 {
			t.Fatalf("workload %s writing its own path: %s", w.name, stderr)
		}
		_, stderr, code = as(w, "kv", "get", "kv/apps/"+other.ns+"/db")
		if code != 1 || !strings.Contains(stderr, "PermissionDenied") {
			t.Fatalf("workload %s reading %s's path: exit %d: %s", w.name, other.name, code, stderr)
		}
		_, stderr, code = as(w, "kv", "put", "kv/apps/"+other.ns+"/db", "password=hijacked")
		if code != 1 || !strings.Contains(stderr, "PermissionDenied") {
			t.Fatalf("workload %s writing %s's path: exit %d: %s", w.name, other.name, code, stderr)
		}
	}
	if out := kvMust(t, d, "kv", "get", "kv/apps/spiffe:sigil.test:ns:kvapps:b/db", "--field", "password"); out != "rotated-b" {
		t.Fatalf("b's secret is %q", out)
	}
}

// TestKVImport: `sigil kv import` puts what `vault kv get -format=json`
// printed, and a YAML tree from stdin; a file with one bad path is
// refused naming it, and none of its good secrets is written.
func TestKVImport(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	kvMust(t, d, "engine", "enable", "kv", "--mount", "kv")

	vault := filepath.Join(dir, "vault.json")
	os.WriteFile(vault, []byte(`{"request_id":"5e0c","lease_id":"","lease_duration":0,"renewable":false,
  "data":{"data":{"password":"v-s3cr3t","port":5432},"metadata":{"created_time":"2026-01-02T03:04:05Z","custom_metadata":null,"deletion_time":"","destroyed":false,"version":4}},"warnings":null}`), 0o600)
	out := kvMust(t, d, "kv", "import", "--mount", "kv", "--path", "legacy/db", vault)
	if !strings.Contains(out, "imported 1 secrets (2 fields) into kv") {
		t.Fatalf("import output %q", out)
	}
	if got := kvMust(t, d, "kv", "get", "kv/legacy/db", "--field", "password"); got != "v-s3cr3t" {
		t.Fatalf("password = %q", got)
	}
	if got := kvMust(t, d, "kv", "get", "kv/legacy/db", "--field", "port"); got != "5432" {
		t.Fatalf("port = %q", got)
	}
	// Without --path, that file carries no path: refused, saying so.
	kvFail(t, d, 1, []string{"--path", "nothing written"}, "kv", "import", "--mount", "kv", vault)

	tree := "apps/web:\n  user: web\n  password: w-pass\napps/api:\n  data:\n    data:\n      token: a-tok\n    metadata: {version: 1}\n"
	out, stderr, code := d.cliStdin(t, tree, "kv", "import", "--mount", "kv", "--format", "json", "-")
	if code != 0 {
		t.Fatalf("import from stdin: %s", stderr)
	}
	var rep struct {
		Secrets int `json:"secrets"`
		Fields  int `json:"fields"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Secrets != 2 || rep.Fields != 3 {
		t.Fatalf("import report %q (%v)", out, err)
	}
	if got := kvMust(t, d, "kv", "get", "kv/apps/api", "--field", "token"); got != "a-tok" {
		t.Fatalf("token = %q", got)
	}

	// One bad path among good ones: nothing at all is written.
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"fresh/one":{"a":"1"},"fresh/../two":{"a":"2"},"fresh/three":{"a":"3"}}`), 0o600)
	kvFail(t, d, 1, []string{"fresh/../two", "nothing written"}, "kv", "import", "--mount", "kv", bad)
	kvFail(t, d, 1, []string{"NotFound"}, "kv", "get", "kv/fresh/one")
	kvFail(t, d, 1, []string{"NotFound"}, "kv", "get", "kv/fresh/three")
	// A server-side refusal midway (no such mount) names the secret.
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"x":{"a":"1"}}`), 0o600)
	kvFail(t, d, 1, []string{"nomount/x", "0 of 1"}, "kv", "import", "--mount", "nomount", good)
}
