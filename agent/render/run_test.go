package render

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// renderServer starts the real server with a kv engine at "kv".
func renderServer(t *testing.T) (*testharness.Sigil, *GRPCSource) {
	t.Helper()
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx := context.Background()
	if _, err := sigilv1.NewEngineServiceClient(s.Conn).Enable(ctx, &sigilv1.EnableEngineRequest{Type: "kv", Mount: "kv"}); err != nil {
		t.Fatalf("enable kv: %v", err)
	}
	return s, NewGRPCSource(s.Conn)
}

func renderKVPut(t *testing.T, s *testharness.Sigil, path string, data map[string]string) {
	t.Helper()
	d := map[string][]byte{}
	for k, v := range data {
		d[k] = []byte(v)
	}
	if _, err := sigilv1.NewKVServiceClient(s.Conn).Put(context.Background(), &sigilv1.KVWriteRequest{Mount: "kv", Path: path, Data: d}); err != nil {
		t.Fatalf("kv put %s: %v", path, err)
	}
}

// countingSource counts the calls that reach the real source.
type countingSource struct {
	Source
	kv, creds, cert, renew, revoke atomic.Int32
}

func (c *countingSource) KV(ctx context.Context, m, p string) (*KVSecret, error) {
	c.kv.Add(1)
	return c.Source.KV(ctx, m, p)
}
func (c *countingSource) Creds(ctx context.Context, m, r string) (*Lease, error) {
	c.creds.Add(1)
	return c.Source.Creds(ctx, m, r)
}
func (c *countingSource) Cert(ctx context.Context, p, n string) (*Cert, error) {
	c.cert.Add(1)
	return c.Source.Cert(ctx, p, n)
}
func (c *countingSource) Renew(ctx context.Context, id string, inc time.Duration) (*LeaseInfo, error) {
	c.renew.Add(1)
	return c.Source.Renew(ctx, id, inc)
}
func (c *countingSource) Revoke(ctx context.Context, id string) error {
	c.revoke.Add(1)
	return c.Source.Revoke(ctx, id)
}

// shmDir is a fresh directory on /dev/shm (tmpfs), removed after the test.
func shmDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "sigil-render-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool, logs ...*logBuffer) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			for _, l := range logs {
				t.Logf("log:\n%s", l.String())
			}
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return string(b)
}

// hupCounter starts a shell that appends a line to a file on each SIGHUP
// and writes its pid to a pidfile.
func hupCounter(t *testing.T, dir string) (pidfile, hups string) {
	t.Helper()
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
	waitUntil(t, 5*time.Second, "pidfile", func() bool { return readFile(t, pidfile) != "" })
	return pidfile, hups
}

// TestRunKVFileRotationAndMissingSecret renders a kv secret into a 0400
// file on tmpfs, re-renders and signals the pidfile'd process when the
// secret changes, keeps the old file when the secret disappears, and
// removes the file on exit.
func TestRunKVFileRotationAndMissingSecret(t *testing.T) {
	s, src := renderServer(t)
	renderKVPut(t, s, "app", map[string]string{"password": "first-secret-value"})
	dir := shmDir(t)
	pidfile, hups := hupCounter(t, t.TempDir())
	dest := filepath.Join(dir, "app.conf")
	cfg := Config{KVRefresh: Duration(time.Second), Templates: []Template{{
		Contents:    `password={{ kv "kv/app" "password" }} again={{ kv "kv/app" "password" }}`,
		Destination: dest, Mode: 0o400, Reload: &Reload{Signal: "HUP", Pidfile: pidfile}, RemoveOnExit: true,
	}}}
	log, logs := newLog()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cs := &countingSource{Source: src}
	go func() { done <- Run(ctx, cfg, cs, log) }()

	waitUntil(t, 10*time.Second, "first render", func() bool { return strings.HasPrefix(readFile(t, dest), "password=first") })
	if got := readFile(t, dest); got != "password=first-secret-value again=first-secret-value" {
		t.Errorf("rendered %q", got)
	}
	fi, err := os.Stat(dest)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("mode %v (err %v), want 0400", fi.Mode(), err)
	}
	if n := cs.kv.Load(); n != 1 {
		t.Errorf("the secret referenced twice was fetched %d times, want once", n)
	}
	waitUntil(t, 5*time.Second, "reload signal after first render", func() bool { return strings.Count(readFile(t, hups), "hup") == 1 })

	renderKVPut(t, s, "app", map[string]string{"password": "second-secret-value"})
	waitUntil(t, 10*time.Second, "re-render after the kv secret changed", func() bool { return strings.HasPrefix(readFile(t, dest), "password=second") })
	waitUntil(t, 5*time.Second, "reload signal after the change", func() bool { return strings.Count(readFile(t, hups), "hup") == 2 })

	// The secret disappears: the render fails, the file stays, an error is
	// logged, Run goes on.
	if _, err := sigilv1.NewKVServiceClient(s.Conn).DeleteMetadata(context.Background(), &sigilv1.KVPathRequest{Mount: "kv", Path: "app"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "render failure logged", func() bool { return strings.Contains(logs.String(), "render failed") })
	if got := readFile(t, dest); !strings.HasPrefix(got, "password=second") {
		t.Errorf("after the secret vanished the file is %q, want the old one kept", got)
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended after a missing secret: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Errorf("remove_on_exit: file still there (%v)", err)
	}
	for _, secretValue := range []string{"first-secret-value", "second-secret-value"} {
		if strings.Contains(logs.String(), secretValue) {
			t.Errorf("the log holds a secret value")
		}
	}
}

// TestRunRefusesDiskDestination: a destination on a disk filesystem is
// refused unless allow_disk is set.
func TestRunRefusesDiskDestination(t *testing.T) {
	s, src := renderServer(t)
	renderKVPut(t, s, "app", map[string]string{"password": "pw"})
	dir := t.TempDir()
	if mem, _, _ := memoryBacked(dir); mem {
		t.Skipf("%s is memory backed here", dir)
	}
	dest := filepath.Join(dir, "f")
	cfg := Config{Templates: []Template{{Contents: `{{ kv "kv/app" "password" }}`, Destination: dest}}}
	err := RenderOnce(context.Background(), cfg, src, nil)
	if !errors.Is(err, ErrDiskBacked) {
		t.Fatalf("RenderOnce to %s = %v, want ErrDiskBacked", dir, err)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Errorf("a file was written to disk")
	}
	cfg.AllowDisk = true
	if err := RenderOnce(context.Background(), cfg, src, nil); err != nil {
		t.Fatalf("with allow_disk: %v", err)
	}
	if got := readFile(t, dest); got != "pw" {
		t.Errorf("with allow_disk rendered %q", got)
	}
}

// TestHostileTemplates: templates cannot read files or the environment,
// output and the number of secrets are bounded, and malformed secret
// paths never reach the server.
func TestHostileTemplates(t *testing.T) {
	s, src := renderServer(t)
	renderKVPut(t, s, "app", map[string]string{"password": "pw"})
	for i := range MaxSecretsPerTemplate + 2 {
		renderKVPut(t, s, "x"+strconv.Itoa(i), map[string]string{"f": "v"})
	}
	t.Setenv("SIGIL_TOKEN", "sgt_must-not-leak")
	tests := []struct {
		name, text string
		parseErr   bool
		wantErr    string
		maxCalls   int32
	}{
		{name: "read a file with a function", text: `{{ readFile "/etc/passwd" }}`, parseErr: true},
		{name: "include a file as a template", text: `{{ template "/etc/passwd" }}`, wantErr: "not defined"},
		{name: "environment", text: `{{ env "SIGIL_TOKEN" }}`, parseErr: true},
		{name: "output bound", text: `{{ range 2000000 }}xxxxxxxxxx{{ end }}`, wantErr: "larger than"},
		{name: "missing secrets stop at the first", text: `{{ range $i := 1000 }}{{ kv (printf "kv/none%d" $i) "f" }}{{ end }}`, wantErr: "not found", maxCalls: 1},
		{name: "secret count bound", text: `{{ range $i := 1000 }}{{ kv (printf "kv/x%d" $i) "f" }}{{ end }}`, wantErr: "more than 64 secrets", maxCalls: MaxSecretsPerTemplate},
		{name: "dot-dot kv path", text: `{{ kv "kv/../sys/seal" "x" }}`, wantErr: "segment"},
		{name: "kv without path", text: `{{ kv "kv" "x" }}`, wantErr: "want MOUNT/PATH"},
		{name: "creds without role", text: `{{ creds "db" }}`, wantErr: "want MOUNT/ROLE"},
		{name: "cert name with newline", text: `{{ cert "server" "a.test\nb" }}`, wantErr: "want a DNS name"},
		{name: "missing field", text: `{{ kv "kv/app" "nope" }}`, wantErr: `no field "nope"`},
		{name: "missing map key", text: `{{ with creds "kv/app" }}{{ .nope }}{{ end }}`, wantErr: "creds kv/app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := parseTemplate("t", tt.text)
			if tt.parseErr {
				if err == nil {
					t.Fatal("parsed; want a parse error (no such function)")
				}
				return
			}
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			cs := &countingSource{Source: src}
			r := &runner{src: cs, log: slog.New(slog.DiscardHandler), secrets: map[secretRef]*secret{}}
			out, _, err := renderTemplate(context.Background(), tmpl, r.get)
			if strings.Contains(string(out), "sgt_must-not-leak") {
				t.Fatal("the template read the environment")
			}
			calls := cs.kv.Load() + cs.creds.Load() + cs.cert.Load()
			if tt.maxCalls > 0 && calls > tt.maxCalls {
				t.Errorf("%d server calls, want at most %d", calls, tt.maxCalls)
			}
			if tt.wantErr == "" {
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("render error = %v, want %q", err, tt.wantErr)
			}
			if (strings.Contains(tt.name, "path") || strings.Contains(tt.name, "without") || strings.Contains(tt.name, "newline")) && calls != 0 {
				t.Errorf("a malformed path reached the server (%d calls)", calls)
			}
		})
	}
}

// TestTemplateSourceSafety: a template file, or a directory on its path,
// that someone other than root or the agent's user can change is refused;
// so is a hard link or a foreign symlink in a shared directory (the
// file-reading attacks a template source opens).
func TestTemplateSourceSafety(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files owned by another user")
	}
	base := t.TempDir()
	mk := func(p string, mode os.FileMode, uid int) string {
		t.Helper()
		if err := os.WriteFile(p, []byte("{{ kv \"kv/app\" \"password\" }}"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mk(filepath.Join(base, "good.tmpl"), 0o644, 0)
	worldWritable := mk(filepath.Join(base, "ww.tmpl"), 0o666, 0)
	foreign := mk(filepath.Join(base, "foreign.tmpl"), 0o644, 65534)
	openDir := filepath.Join(base, "open")
	os.Mkdir(openDir, 0o777)
	os.Chmod(openDir, 0o777)
	inOpen := mk(filepath.Join(openDir, "t.tmpl"), 0o644, 0)
	sticky := filepath.Join(base, "sticky")
	os.Mkdir(sticky, 0o777)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	foreignLink := filepath.Join(sticky, "link.tmpl")
	if err := os.Symlink("/etc/passwd", foreignLink); err != nil {
		t.Fatal(err)
	}
	os.Lchown(foreignLink, 65534, 65534)
	ownLink := filepath.Join(sticky, "own.tmpl")
	os.Symlink(good, ownLink)
	hard := filepath.Join(base, "hard.tmpl")
	if err := os.Link("/etc/passwd", hard); err != nil {
		t.Logf("cannot hard link /etc/passwd here (%v); using a second link to a template", err)
		os.Link(good, hard)
	}
	tests := []struct {
		path, wantErr string
	}{
		{good, ""},
		{ownLink, ""},
		{worldWritable, "lets others edit it"},
		{foreign, "owned by uid 65534"},
		{inOpen, "writable by others without the sticky bit"},
		{foreignLink, "symlink owned by uid 65534"},
		{hard, "hard links"},
		{filepath.Join(base, "missing.tmpl"), "no such file"},
		{base, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.path), func(t *testing.T) {
			text, err := readSource(tt.path)
			if tt.wantErr == "" {
				if err != nil || !strings.Contains(text, "kv/app") {
					t.Fatalf("readSource = %q, %v", text, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("readSource error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestRunExecRestartsAndExitStatus: the command sees the secret in its
// environment but not the agent's token, is restarted with the new value
// when the secret changes, and Run reports its exit status.
func TestRunExecRestartsAndExitStatus(t *testing.T) {
	s, src := renderServer(t)
	renderKVPut(t, s, "app", map[string]string{"password": "v1"})
	t.Setenv("SIGIL_TOKEN", "sgt_agent-token")
	out := filepath.Join(t.TempDir(), "seen")
	cfg := Config{KVRefresh: Duration(time.Second), Exec: &Exec{
		Command: []string{"sh", "-c", `echo "pw=$PW token=${SIGIL_TOKEN:-none}" >> "$1"; trap 'exit 0' TERM; while :; do sleep 0.05; done`, "sh", out},
		Env:     map[string]string{"PW": `{{ kv "kv/app" "password" }}`},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, src, nil) }()
	waitUntil(t, 10*time.Second, "first start", func() bool { return readFile(t, out) == "pw=v1 token=none\n" })
	renderKVPut(t, s, "app", map[string]string{"password": "v2"})
	waitUntil(t, 15*time.Second, "restart with the new value", func() bool { return strings.Contains(readFile(t, out), "pw=v2") })
	cancel()
	err := <-done
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 0 {
		t.Fatalf("Run after cancel = %v, want the command's status 0", err)
	}

	// signal instead of a restart: the command stays, gets HUP.
	sigOut := filepath.Join(t.TempDir(), "sig")
	cfg.Exec = &Exec{Signal: "HUP", Env: map[string]string{"PW": `{{ kv "kv/app" "password" }}`},
		Command: []string{"sh", "-c", `echo "start pw=$PW" >> "$1"; trap 'echo hup >> "$1"' HUP; trap 'exit 0' TERM; while :; do sleep 0.05; done`, "sh", sigOut}}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- Run(ctx, cfg, src, nil) }()
	waitUntil(t, 10*time.Second, "start", func() bool { return readFile(t, sigOut) == "start pw=v2\n" })
	renderKVPut(t, s, "app", map[string]string{"password": "v3"})
	waitUntil(t, 15*time.Second, "HUP on change", func() bool { return strings.Contains(readFile(t, sigOut), "hup") })
	if n := strings.Count(readFile(t, sigOut), "start"); n != 1 {
		t.Errorf("signal mode restarted the command (%d starts)", n)
	}
	cancel()
	<-done

	cfg.Exec = &Exec{Command: []string{"sh", "-c", `test "$PW" = v3 && exit 7`}, Env: map[string]string{"PW": `{{ kv "kv/app" "password" }}`}}
	err = Run(context.Background(), cfg, src, nil)
	if !errors.As(err, &ee) || ee.Code != 7 {
		t.Fatalf("Run = %v, want exit status 7", err)
	}
	cfg.Exec.Env["PW"] = `{{ kv "kv/app" "missing" }}`
	err = Run(context.Background(), cfg, src, nil)
	if err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), "not starting") {
		t.Fatalf("Run with a missing secret = %v, want a refusal to start", err)
	}
}

// renderPGMount mounts a postgres engine at "db" with role "app".
func renderPGMount(t *testing.T, s *testharness.Sigil, defaultTTL, maxTTL string) {
	t.Helper()
	dsn := testharness.StartPostgres(t)
	e := sigilv1.NewEngineServiceClient(s.Conn)
	ctx := context.Background()
	if _, err := e.Enable(ctx, &sigilv1.EnableEngineRequest{Type: "postgres", Mount: "db"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Configure(ctx, &sigilv1.ConfigureEngineRequest{Mount: "db", Config: map[string]string{
		"connection_url": dsn, "max_open_connections": "4", "scram_iterations": "16"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WriteRole(ctx, &sigilv1.WriteRoleRequest{Mount: "db", Role: "app", Fields: map[string]string{
		"creation_statements": "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};",
		"default_ttl":         defaultTTL, "max_ttl": maxTTL}}); err != nil {
		t.Fatal(err)
	}
}

func activeLeases(t *testing.T, s *testharness.Sigil, prefix string) []string {
	t.Helper()
	resp, err := sigilv1.NewLeaseServiceClient(s.Conn).List(context.Background(), &sigilv1.ListLeasesRequest{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range resp.GetLeases() {
		if l.GetState() == "active" {
			out = append(out, l.GetId())
		}
	}
	return out
}

// TestRunCredsLeaseLifecycle: one lease for a credential used by two
// templates; it is renewed without re-rendering, replaced before its max
// TTL, re-minted after an operator revokes it, and revoked on exit.
func TestRunCredsLeaseLifecycle(t *testing.T) {
	s, src := renderServer(t)
	renderPGMount(t, s, "3s", "9s")
	dir := shmDir(t)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	tmpl := `{{ with creds "db/app" }}{{ .username }}:{{ .password }}{{ end }}`
	cfg := Config{Templates: []Template{{Contents: tmpl, Destination: a}, {Contents: tmpl, Destination: b}}}
	cs := &countingSource{Source: src}
	log, logs := newLog()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, cs, log) }()

	waitUntil(t, 10*time.Second, "first render", func() bool { return readFile(t, a) != "" && readFile(t, b) != "" })
	first := readFile(t, a)
	if readFile(t, b) != first || !strings.HasPrefix(first, "sigil_app_") {
		t.Fatalf("two templates of one credential differ or are wrong: %q %q", first, readFile(t, b))
	}
	if n := cs.creds.Load(); n != 1 {
		t.Errorf("minted %d times for two templates, want once", n)
	}
	// Renewal keeps the file.
	waitUntil(t, 10*time.Second, "a renewal", func() bool { return cs.renew.Load() >= 1 })
	if readFile(t, a) != first {
		t.Error("the file changed on a plain renewal")
	}
	// Max TTL 9s: a successor is minted before the lease ends.
	waitUntil(t, 15*time.Second, "re-mint near max TTL", func() bool { return readFile(t, a) != first })
	second := readFile(t, a)
	waitUntil(t, 5*time.Second, "both files follow", func() bool { return readFile(t, b) == second })

	// An operator revokes the current lease: the next renewal is refused
	// and a new credential replaces it.
	ids := activeLeases(t, s, "db/app/")
	if len(ids) == 0 {
		t.Fatal("no active lease")
	}
	for _, id := range ids {
		if _, err := sigilv1.NewLeaseServiceClient(s.Conn).Revoke(context.Background(), &sigilv1.RevokeLeaseRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 15*time.Second, "re-mint after revocation", func() bool {
		c := readFile(t, a)
		return c != second && c != first && c != ""
	})
	if !strings.Contains(logs.String(), "lease renewal refused") {
		t.Errorf("no log of the refused renewal:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left := activeLeases(t, s, "db/app/"); len(left) != 0 {
		t.Errorf("leases still active after Run ended with revoke_on_exit: %v", left)
	}
	if strings.Contains(logs.String(), strings.SplitN(first, ":", 2)[1]) {
		t.Error("the log holds a password")
	}
}

// TestRenderCert: a certificate and the key made here render into one
// file that loads as a TLS key pair for the requested name.
func TestRenderCert(t *testing.T) {
	_, src := renderServer(t)
	dir := shmDir(t)
	dest := filepath.Join(dir, "tls.pem")
	cfg := Config{Templates: []Template{{Destination: dest, Mode: 0o600,
		Contents: `{{ with cert "server" "svc.example.test" }}{{ .cert }}{{ .chain }}{{ .key }}{{ end }}`}}}
	if err := RenderOnce(context.Background(), cfg, src, nil); err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(pemBytes, pemBytes)
	if err != nil {
		t.Fatalf("rendered file is not a key pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("svc.example.test"); err != nil {
		t.Errorf("certificate: %v", err)
	}
	if len(pair.Certificate) < 2 {
		t.Errorf("no chain rendered (%d certificates)", len(pair.Certificate))
	}
}

// TestRunServerOutageKeepsFiles: with the server gone, refreshes fail as
// transient, the secret is kept (not treated as deleted), the file stays,
// and Run keeps going until it is stopped.
func TestRunServerOutageKeepsFiles(t *testing.T) {
	s, _ := renderServer(t)
	renderKVPut(t, s, "app", map[string]string{"password": "outage-value"})
	// A connection of the renderer's own, which outlives the server as an
	// agent's does.
	conn, err := grpc.NewClient(s.Server.GRPCAddr(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: s.RootPool, MinVersion: tls.VersionTLS12})),
		grpc.WithPerRPCCredentials(testharness.BearerToken(s.RootToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src := NewGRPCSource(conn)
	dest := filepath.Join(shmDir(t), "f")
	cfg := Config{KVRefresh: Duration(time.Second), Templates: []Template{{Contents: `{{ kv "kv/app" "password" }}`, Destination: dest}}}
	log, logs := newLog()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, src, log) }()
	waitUntil(t, 10*time.Second, "first render", func() bool { return readFile(t, dest) == "outage-value" })
	s.Stop()
	waitUntil(t, 15*time.Second, "a failed refresh", func() bool { return strings.Contains(logs.String(), "fetching a secret failed; retrying") }, logs)
	if strings.Contains(logs.String(), "no longer available") || strings.Contains(logs.String(), "render failed") {
		t.Errorf("an outage was taken for a deleted secret:\n%s", logs.String())
	}
	if got := readFile(t, dest); got != "outage-value" {
		t.Errorf("file during the outage = %q", got)
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended during the outage: %v", err)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel with the server down")
	}
}

// TestFailedRenderKeepsOtherSecrets: when a render fails part way (its
// first secret vanished), the secrets the delivered file still uses stay
// held, so their leases keep being renewed while the render is retried.
func TestFailedRenderKeepsOtherSecrets(t *testing.T) {
	s, src := renderServer(t)
	renderKVPut(t, s, "a", map[string]string{"f": "1"})
	renderKVPut(t, s, "b", map[string]string{"f": "2"})
	dest := filepath.Join(shmDir(t), "f")
	cfg := Config{Templates: []Template{{Contents: `{{ kv "kv/a" "f" }}{{ kv "kv/b" "f" }}`, Destination: dest}}}
	r, err := newRunner(cfg, src, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r.renderAll(ctx)
	if readFile(t, dest) != "12" {
		t.Fatalf("rendered %q", readFile(t, dest))
	}
	if _, err := sigilv1.NewKVServiceClient(s.Conn).DeleteMetadata(ctx, &sigilv1.KVPathRequest{Mount: "kv", Path: "a"}); err != nil {
		t.Fatal(err)
	}
	a, b := secretRef{kindKV, "kv", "a"}, secretRef{kindKV, "kv", "b"}
	if !r.advance(ctx, r.secrets[a]) {
		t.Fatal("a vanished secret did not count as a change")
	}
	r.markDependents(a)
	r.renderAll(ctx)
	if r.targets[0].failures == 0 {
		t.Fatal("the render did not fail")
	}
	if _, held := r.secrets[b]; !held {
		t.Error("the secret the kept file still uses was dropped after a failed render")
	}
	if readFile(t, dest) != "12" {
		t.Errorf("file changed to %q", readFile(t, dest))
	}
}
