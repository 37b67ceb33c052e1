package e2e

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// renderSetupPG mounts a postgres engine at db with a role "app" whose
// leases last ttl, so a revoked lease is noticed at the next renewal.
func renderSetupPG(t *testing.T, d *devServer, dsn, ttl string) {
	t.Helper()
	stmts := filepath.Join(t.TempDir(), "creation.sql")
	if err := os.WriteFile(stmts, []byte("CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]string{
		{"engine", "enable", "postgres", "--mount", "db"},
		{"engine", "configure", "db", "connection_url=" + dsn, "max_open_connections=4", "scram_iterations=16"},
		{"role", "write", "db/app", "creation_statements=@" + stmts, "default_ttl=" + ttl, "max_ttl=1h"},
		{"engine", "enable", "kv", "--mount", "kv"},
		{"kv", "put", "kv/app", "api_key=render-e2e-kv-value"},
	} {
		if _, stderr, code := d.cli(t, s...); code != 0 {
			t.Fatalf("%v: code %d: %s", s, code, stderr)
		}
	}
}

// renderShmDir is a fresh directory on /dev/shm, a tmpfs.
func renderShmDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "sigil-e2e-render-")
	if err != nil {
		t.Fatalf("need /dev/shm (tmpfs): %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// renderHupTarget is a process that records each SIGHUP, with a pidfile.
func renderHupTarget(t *testing.T) (pidfile, hups string) {
	t.Helper()
	dir := t.TempDir()
	pidfile, hups = filepath.Join(dir, "app.pid"), filepath.Join(dir, "hups")
	// Under nohup the tests run with SIGHUP ignored, which a child
	// inherits and its shell cannot trap; handling it here for the test's
	// length gives the child the default disposition.
	hupc := make(chan os.Signal, 1)
	signal.Notify(hupc, syscall.SIGHUP)
	t.Cleanup(func() { signal.Stop(hupc) })
	cmd := exec.Command("sh", "-c", `trap 'echo hup >> "$1"' HUP; echo $$ > "$2"; while :; do sleep 0.05; done`, "sh", hups, pidfile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 5*time.Second, "pidfile written", func() bool { return renderRead(pidfile) != "" })
	return pidfile, hups
}

func renderRead(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return string(b)
}

// renderChild runs a long-lived sigil client command against d.
type renderChild struct {
	child
	stderr *syncBuffer
}

// watch reaps the started process and kills it at cleanup if it still runs.
func (c *renderChild) watch(t *testing.T) {
	go c.reap()
	t.Cleanup(func() {
		if !c.hasExited() {
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
}

func renderStart(t *testing.T, d *devServer, dir string, args ...string) *renderChild {
	t.Helper()
	c := &renderChild{child: newChild(exec.Command(sigilBin, args...)), stderr: &syncBuffer{}}
	c.cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN="+d.exports["SIGIL_TOKEN"], "SIGIL_CACERT="+d.exports["SIGIL_CACERT"])
	c.cmd.Dir = dir
	c.cmd.Stderr, c.cmd.Stdout = c.stderr, c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.watch(t)
	return c
}

// renderFileCreds parses the user=/password= lines of the rendered file.
func renderFileCreds(t *testing.T, content string) (user, password string) {
	t.Helper()
	for _, l := range strings.Split(content, "\n") {
		if v, ok := strings.CutPrefix(l, "user="); ok {
			user = v
		}
		if v, ok := strings.CutPrefix(l, "password="); ok {
			password = v
		}
	}
	if user == "" || password == "" {
		t.Fatalf("rendered file lacks user= or password= (%d bytes)", len(content))
	}
	return user, password
}

func renderActiveLeases(t *testing.T, d *devServer, prefix string) []string {
	t.Helper()
	var ids []string
	for _, l := range listLeases(t, d, "--prefix", prefix) {
		if l.State == "active" {
			ids = append(ids, l.ID)
		}
	}
	return ids
}

// TestRenderPostgresFileOnTmpfs: `sigil agent render` writes a PostgreSQL
// credential into a 0400 file on tmpfs that psql logs in with; after the
// lease is revoked with `sigil lease revoke` it mints a new one, rewrites
// the file and signals the pidfile'd process; a kv secret that disappears
// keeps its old file; SIGTERM revokes the leases and removes the files
// marked remove_on_exit.
func TestRenderPostgresFileOnTmpfs(t *testing.T) {
	pg := newPGTarget(t)
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	renderSetupPG(t, d, pg.dsn, "4s")
	dir := renderShmDir(t)
	pidfile, hups := renderHupTarget(t)
	dbFile, kvFile := filepath.Join(dir, "db.env"), filepath.Join(dir, "api.key")
	cfgPath := filepath.Join(t.TempDir(), "agent.yaml")
	cfg := `# the agent's own keys are the same schema; sigil agent render does not use them
socket: /run/sigil/agent.sock
kv_refresh: 1s
templates:
  - contents: |
      {{ with creds "db/app" }}user={{ .username }}
      password={{ .password }}
      {{ end }}
    destination: ` + dbFile + `
    mode: 0400
    reload: {signal: HUP, pidfile: ` + pidfile + `}
  - contents: '{{ kv "kv/app" "api_key" }}'
    destination: ` + kvFile + `
    mode: 0440
    remove_on_exit: true
`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := renderStart(t, d, t.TempDir(), "agent", "render", "--config", cfgPath)

	waitFor(t, 20*time.Second, "credential file rendered", func() bool { return strings.Contains(renderRead(dbFile), "password=") })
	fi, err := os.Stat(dbFile)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("credential file mode %v (err %v), want 0400", fi.Mode(), err)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(dbFile, &sfs); err != nil || sfs.Type != 0x01021994 {
		t.Fatalf("credential file is not on tmpfs (type 0x%x, err %v)", sfs.Type, err)
	}
	user1, pw1 := renderFileCreds(t, renderRead(dbFile))
	if who, err := pg.psqlLogin(t, user1, pw1); err != nil || who != user1 {
		t.Fatalf("psql with the rendered credential: current_user %q, err %v", who, err)
	}
	waitFor(t, 10*time.Second, "reload signal after the first render", func() bool { return strings.Count(renderRead(hups), "hup") >= 1 })
	hupsBefore := strings.Count(renderRead(hups), "hup")
	if got := renderRead(kvFile); got != "render-e2e-kv-value" {
		t.Errorf("kv file = %q", got)
	}

	// Revoke the lease behind the file: the agent notices at its next
	// renewal, mints anew, rewrites the file and sends the reload signal.
	ids := renderActiveLeases(t, d, "db/app/")
	if len(ids) != 1 {
		t.Fatalf("active leases %v, want the one the file uses", ids)
	}
	if _, stderr, code := d.cli(t, "lease", "revoke", ids[0]); code != 0 {
		t.Fatalf("lease revoke: %s", stderr)
	}
	waitFor(t, 30*time.Second, "file rewritten with a new credential", func() bool {
		c := renderRead(dbFile)
		return strings.Contains(c, "password=") && !strings.Contains(c, pw1)
	})
	user2, pw2 := renderFileCreds(t, renderRead(dbFile))
	if user2 == user1 {
		t.Errorf("the new credential has the revoked user name %s", user1)
	}
	if who, err := pg.psqlLogin(t, user2, pw2); err != nil || who != user2 {
		t.Fatalf("psql with the re-minted credential: current_user %q, err %v", who, err)
	}
	if _, err := pg.psqlLogin(t, user1, pw1); err == nil {
		t.Error("the revoked credential still logs in")
	}
	waitFor(t, 10*time.Second, "reload signal after the re-mint", func() bool { return strings.Count(renderRead(hups), "hup") > hupsBefore })
	if fi, err := os.Stat(dbFile); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("re-rendered file mode %v, want 0400", fi.Mode())
	}

	// A secret that disappears fails its render; the old file stays.
	if _, stderr, code := d.cli(t, "kv", "metadata", "delete", "kv/app"); code != 0 {
		t.Fatalf("kv metadata delete: %s", stderr)
	}
	waitFor(t, 15*time.Second, "render failure logged", func() bool { return strings.Contains(r.stderr.String(), "render failed") })
	if got := renderRead(kvFile); got != "render-e2e-kv-value" {
		t.Errorf("after the secret was deleted the file holds %q, want the old value kept", got)
	}
	if r.hasExited() {
		t.Fatalf("sigil render exited after a missing secret:\n%s", r.stderr.String())
	}

	// SIGTERM: a clean exit revokes the leases and removes remove_on_exit files.
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("sigil render after SIGTERM: %v\n%s", err, r.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sigil render did not exit within 30s of SIGTERM")
	}
	if left := renderActiveLeases(t, d, "db/app/"); len(left) != 0 {
		t.Errorf("leases still active after exit: %v", left)
	}
	if _, err := os.Stat(kvFile); !os.IsNotExist(err) {
		t.Errorf("remove_on_exit file still there: %v", err)
	}
	for _, secret := range []string{pw1, pw2, "render-e2e-kv-value"} {
		if strings.Contains(r.stderr.String(), secret) {
			t.Error("sigil render logged a secret value")
		}
	}
}

// renderSnapshot lists the files under dirs with their sizes and times.
func renderSnapshot(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if info, err := e.Info(); err == nil && !e.IsDir() {
				out[p] = info.ModTime().String()
			}
			return nil
		})
	}
	return out
}

// renderContains reports files under dirs that hold needle.
func renderContains(dirs []string, needle string) []string {
	var hits []string
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(needle)) {
					hits = append(hits, p)
				}
			}
			return nil
		})
	}
	return hits
}

// TestRenderExec: `sigil exec` gives the command a PostgreSQL credential
// and a kv secret in its environment (psql logs in with it from inside),
// not the token, creates no file anywhere it could, exits with the
// command's status, forwards SIGTERM, and revokes the lease afterwards.
func TestRenderExec(t *testing.T) {
	pg := newPGTarget(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dataDir)
	renderSetupPG(t, d, pg.dsn, "1h")
	host, port, db := pg.hostPort(t)
	work, home := t.TempDir(), t.TempDir()
	watched := []string{dataDir, work, home, "/dev/shm"}
	// New files are looked for where sigil exec could write (other tests
	// may add files to /dev/shm meanwhile: there only the password is
	// searched for).
	before := renderSnapshot(t, dataDir, work, home)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, "exec",
		"--env", `DB_USER={{ with creds "db/app" }}{{ .username }}{{ end }}`,
		"--env", `DB_PASSWORD={{ with creds "db/app" }}{{ .password }}{{ end }}`,
		"--env", `API_KEY={{ kv "kv/app" "api_key" }}`,
		"--", "sh", "-c", `echo "pw=$DB_PASSWORD"; echo "key=$API_KEY"; echo "token=${SIGIL_TOKEN:-none}";
PGPASSWORD="$DB_PASSWORD" psql -X -w -tA -h "$1" -p "$2" -d "$3" -U "$DB_USER" -c 'SELECT current_user'; exit 3`, "sh", host, port, db)
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN="+d.exports["SIGIL_TOKEN"],
		"SIGIL_CACERT="+d.exports["SIGIL_CACERT"], "HOME="+home, "XDG_RUNTIME_DIR=", "PGSSLMODE=disable")
	cmd.Dir = work
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 3 {
		t.Fatalf("sigil exec: %v, want the command's exit status 3; stdout %q stderr %q", err, stdout.String(), stderr.String())
	}
	var pw, user string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "pw="); ok {
			pw = v
		}
		if strings.HasPrefix(l, "sigil_app_") {
			user = l
		}
	}
	if len(pw) < 32 || user == "" {
		t.Fatalf("the command did not see the credential or psql did not log in: %q (stderr %q)", stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "key=render-e2e-kv-value\n") {
		t.Errorf("the command did not see the kv secret: %q", stdout.String())
	}
	if !strings.Contains(stdout.String(), "token=none\n") {
		t.Error("the command inherited SIGIL_TOKEN")
	}
	after := renderSnapshot(t, dataDir, work, home)
	for p := range after {
		if _, existed := before[p]; !existed {
			t.Errorf("sigil exec left a new file: %s", p)
		}
	}
	if hits := renderContains(watched, pw); len(hits) > 0 {
		t.Errorf("the password is on disk in %v", hits)
	}
	if left := renderActiveLeases(t, d, "db/app/"); len(left) != 0 {
		t.Errorf("lease still active after sigil exec ended: %v", left)
	}

	// SIGTERM to sigil exec reaches the command, whose status it exits with.
	c := exec.Command(sigilBin, "exec", "--env", `K={{ kv "kv/app" "api_key" }}`, "--",
		"sh", "-c", `trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.05; done`)
	c.Env = cmd.Env
	out := &syncBuffer{}
	c.Stdout, c.Stderr = out, out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "command started", func() bool { return strings.Contains(out.String(), "ready") })
	c.Process.Signal(syscall.SIGTERM)
	err = c.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 9 || !strings.Contains(out.String(), "got-term") {
		t.Errorf("after SIGTERM: %v, output %q; want the command to get it and exit 9", err, out.String())
	}

	// --config: exec: gives the environment and the command; templates:
	// are the agent's and are not rendered by sigil exec.
	never := filepath.Join(renderShmDir(t), "never")
	cfgPath := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfgPath, []byte(`templates:
  - contents: '{{ kv "kv/app" "api_key" }}'
    destination: `+never+`
exec:
  command: [sh, -c, 'echo "key=$API_KEY"']
  env: {API_KEY: '{{ kv "kv/app" "api_key" }}'}
`), 0o600)
	if o, e, code := d.cli(t, "exec", "--config", cfgPath); code != 0 || o != "key=render-e2e-kv-value\n" {
		t.Errorf("exec --config: code %d stdout %q stderr %q", code, o, e)
	}
	if _, err := os.Stat(never); !os.IsNotExist(err) {
		t.Errorf("sigil exec rendered a file template (%v)", err)
	}

	// Deny by default: a token granted kv/app alone gets it, and nothing else.
	pol := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(pol, []byte("rules:\n  - path: \"kv/data/app\"\n    capabilities: [read]\n"), 0o600)
	if _, e, code := d.cli(t, "policy", "write", "render-kv-app", pol); code != 0 {
		t.Fatalf("policy write: %s", e)
	}
	tokOut, e, code := d.cli(t, "token", "create", "--policy", "render-kv-app", "--ttl", "10m", "--field", "token")
	if code != 0 {
		t.Fatalf("token create: %s", e)
	}
	narrow := strings.TrimSpace(tokOut)
	if o, e, code := d.cli(t, "exec", "--token", narrow, "--env", `K={{ kv "kv/app" "api_key" }}`, "--", "sh", "-c", `echo "k=$K"`); code != 0 || o != "k=render-e2e-kv-value\n" {
		t.Errorf("exec with the narrow token: code %d stdout %q stderr %q", code, o, e)
	}
	o, e, code := d.cli(t, "exec", "--token", narrow, "--env", `P={{ with creds "db/app" }}{{ .password }}{{ end }}`, "--", "sh", "-c", "echo started")
	if code == 0 || strings.Contains(o, "started") || !strings.Contains(e, "PermissionDenied") {
		t.Errorf("exec of an ungranted credential: code %d stdout %q stderr %q", code, o, e)
	}

	// A missing secret: the command never starts.
	o, errOut, code := d.cli(t, "exec", "--env", `K={{ kv "kv/none" "x" }}`, "--", "sh", "-c", "echo started")
	if code == 0 || strings.Contains(o, "started") || !strings.Contains(errOut, "not starting") {
		t.Errorf("exec with a missing secret: code %d stdout %q stderr %q", code, o, errOut)
	}
}
