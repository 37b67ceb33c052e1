package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sigil-ca/sigil/internal/slapd"
)

// ldapCLI runs the binary against d without the root token, with its own
// token file and stdin: what a person has before `sigil login`.
func ldapCLI(t *testing.T, d *devServer, tokenFile, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN=", "SIGIL_CACERT="+d.exports["SIGIL_CACERT"],
		"SIGIL_TOKEN_FILE="+tokenFile)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, strings.NewReader(stdin)
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run sigil %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func ldapWrite(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ldapSetup starts a slapd and a dev server with a kv mount "secret", an
// ldap mount "corp" on the directory (search-then-bind over StartTLS with
// the directory's CA pinned), policies "ops" (secret/ops/*) and "staff"
// (secret/shared/*), and LDAP groups ops → ops, all → staff.
func ldapSetup(t *testing.T) (*devServer, *slapd.Server, string) {
	t.Helper()
	dir := t.TempDir()
	ds := slapd.ForTest(t)
	d := startDev(t, filepath.Join(dir, "data"))
	kvMust(t, d, "engine", "enable", "kv", "--mount", "secret")
	kvMust(t, d, "policy", "write", "ops", ldapWrite(t, dir, "ops.yaml", "rules:\n  - path: \"secret/data/ops/*\"\n    capabilities: [read]\n"))
	kvMust(t, d, "policy", "write", "staff", ldapWrite(t, dir, "staff.yaml", "rules:\n  - path: \"secret/data/shared/*\"\n    capabilities: [read]\n"))
	kvMust(t, d, "kv", "put", "secret/ops/db", "password=ops-db-pw")
	kvMust(t, d, "kv", "put", "secret/shared/wiki", "password=wiki-pw")
	kvMust(t, d, "auth", "enable", "ldap", "--mount", "corp")
	ca := ldapWrite(t, dir, "ldap-ca.pem", string(ds.CAPEM()))
	bindpass := ldapWrite(t, dir, "bindpass", slapd.BindPassword)
	kvMust(t, d, "auth", "configure", "corp", "url="+ds.URL(), "starttls=true", "certificate=@"+ca,
		"binddn="+slapd.BindDN, "bindpass=@"+bindpass, "userdn="+slapd.PeopleDN, "userattr=uid",
		"groupdn="+slapd.GroupsDN, "groupfilter=(&(objectClass=groupOfNames)(member={{.UserDN}}))", "groupattr=cn",
		"request_timeout=3s", "connection_timeout=3s")
	kvMust(t, d, "auth", "group", "write", "corp/ops", "token_policies=ops")
	kvMust(t, d, "auth", "group", "write", "corp/all", "token_policies=staff")
	return d, ds, dir
}

type ldapLoginOut struct {
	Token    string            `json:"token"`
	TokenID  string            `json:"token_id"`
	Policies []string          `json:"policies"`
	Identity string            `json:"identity"`
	Metadata map[string]string `json:"metadata"`
}

// TestLDAPLogin: an LDAP user in group ops gets the ops policy (and can
// read what it grants); a user outside ops does not. The password comes
// from --password-file or standard input.
func TestLDAPLogin(t *testing.T) {
	d, _, dir := ldapSetup(t)
	aliceFile := filepath.Join(dir, "alice-token")
	pwFile := ldapWrite(t, dir, "alice-pw", slapd.AlicePassword+"\n")
	out, stderr, code := ldapCLI(t, d, aliceFile, "", "login", "--method", "ldap", "--mount", "corp", "--username", "alice", "--password-file", pwFile, "--format", "json")
	if code != 0 {
		t.Fatalf("alice login: exit %d: %s", code, stderr)
	}
	var l ldapLoginOut
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("login output %q: %v", out, err)
	}
	if !slices.Equal(l.Policies, []string{"ops", "staff"}) || l.Identity != "alice" || l.Metadata["dn"] != slapd.UserDN("alice") {
		t.Fatalf("alice: policies %v identity %q metadata %v, want [ops staff] as alice", l.Policies, l.Identity, l.Metadata)
	}
	if out, stderr, code := ldapCLI(t, d, aliceFile, "", "kv", "get", "secret/ops/db", "--field", "password"); code != 0 || strings.TrimSpace(out) != "ops-db-pw" {
		t.Fatalf("alice reads ops secret: exit %d %q %s", code, out, stderr)
	}

	bobFile := filepath.Join(dir, "bob-token")
	out, stderr, code = ldapCLI(t, d, bobFile, slapd.BobPassword+"\n", "login", "--method", "ldap", "--mount", "corp", "--username", "bob", "--format", "json")
	if code != 0 {
		t.Fatalf("bob login: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l.Policies, []string{"staff"}) {
		t.Fatalf("bob (not in ops): policies %v, want exactly [staff]", l.Policies)
	}
	if _, stderr, code := ldapCLI(t, d, bobFile, "", "kv", "get", "secret/ops/db"); code == 0 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("bob reads ops secret: exit %d %s", code, stderr)
	}
	if out, _, code := ldapCLI(t, d, bobFile, "", "kv", "get", "secret/shared/wiki", "--field", "password"); code != 0 || strings.TrimSpace(out) != "wiki-pw" {
		t.Fatalf("bob reads shared secret: exit %d %q", code, out)
	}

	// A user with characters special to DNs and filters logs in too.
	carolPW := ldapWrite(t, dir, "carol-pw", slapd.CarolPassword)
	if out, stderr, code := ldapCLI(t, d, filepath.Join(dir, "carol-token"), "", "login", "--method", "ldap", "--mount", "corp",
		"--username", slapd.CarolUID, "--password-file", carolPW, "--format", "json"); code != 0 || !strings.Contains(out, `"ops"`) {
		t.Fatalf("carol login: exit %d %s %s", code, out, stderr)
	}
	// LDAP mounts have no roles.
	if _, stderr, code := d.cli(t, "auth", "role", "write", "corp/r", "token_policies=ops"); code == 0 || !strings.Contains(stderr, "no roles") {
		t.Fatalf("role write on ldap mount: exit %d %s", code, stderr)
	}
	if out := kvMust(t, d, "auth", "list", "--format", "json"); !strings.Contains(out, `"type": "ldap"`) {
		t.Fatalf("auth list: %s", out)
	}
}

// ldapPTY opens a pseudo-terminal pair (master, slave).
func ldapPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestLDAPLoginPromptsWithoutEcho: at a terminal, `sigil login --method
// ldap` prompts for the password and does not echo it.
func TestLDAPLoginPromptsWithoutEcho(t *testing.T) {
	d, _, dir := ldapSetup(t)
	master, slave := ldapPTY(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, "login", "--method", "ldap", "--mount", "corp", "--username", "alice", "--format", "json")
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN=", "SIGIL_CACERT="+d.exports["SIGIL_CACERT"],
		"SIGIL_TOKEN_FILE="+filepath.Join(dir, "tty-token"))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var screen syncBuffer
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&screen, master); close(copied) }()
	for !strings.Contains(screen.String(), "Password: ") {
		if ctx.Err() != nil {
			t.Fatalf("no password prompt; screen: %q", screen.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := master.Write([]byte(slapd.AlicePassword + "\n")); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("login at a terminal: %v; screen: %q", err, screen.String())
	}
	master.Close()
	<-copied
	if strings.Contains(screen.String(), slapd.AlicePassword) {
		t.Fatalf("the password was echoed to the terminal: %q", screen.String())
	}
	if !strings.Contains(screen.String(), `"ops"`) {
		t.Fatalf("login at a terminal did not succeed: %q", screen.String())
	}
}
