package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSSHCertificates has Sigil sign an SSH user certificate and logs in
// with it to a real OpenSSH server that trusts only Sigil's SSH CA.
func TestSSHCertificates(t *testing.T) {
	for _, bin := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: scripts/deps.sh installs openssh-server and openssh-client", bin)
		}
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	d := startDev(t, t.TempDir())
	for _, args := range [][]string{
		{"engine", "enable", "keys", "--mount", "ssh"},
		{"role", "write", "ssh/users", "type=ssh_user", "allowed_principals=" + me.Username + ",deploy", "ttl=10m"},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "id_ed25519")
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keyPath)

	// A principal the role does not allow is refused at signing.
	if _, stderr, code := d.cli(t, "ssh", "sign", "ssh/users", "--public-key", keyPath+".pub", "--principals", "admin"); code == 0 ||
		!strings.Contains(stderr, "not allowed") {
		t.Fatalf("principal admin: code %d, %q", code, stderr)
	}
	if _, err := os.Stat(keyPath + "-cert.pub"); err == nil {
		t.Fatal("a refused signing wrote a certificate")
	}

	if _, stderr, code := d.cli(t, "ssh", "sign", "ssh/users", "--public-key", keyPath+".pub", "--principals", me.Username); code != 0 {
		t.Fatal(stderr)
	}
	certPath := keyPath + "-cert.pub"
	listing := run(t, "ssh-keygen", "-L", "-f", certPath)
	if !strings.Contains(listing, "Type: ssh-ed25519-cert-v01@openssh.com user certificate") {
		t.Fatalf("ssh-keygen -L: %s", listing)
	}
	principals := between(listing, "Principals:", "Critical Options:")
	if strings.Fields(principals)[0] != me.Username || len(strings.Fields(principals)) != 1 {
		t.Fatalf("principals %q, want only %s", principals, me.Username)
	}
	// "Valid: from 2026-11-24T00:10:00 to 2026-11-24T00:20:30"
	valid := strings.Fields(between(listing, "Valid:", "Principals:"))
	if len(valid) != 4 || valid[0] != "from" || valid[2] != "to" {
		t.Fatalf("validity %q", valid)
	}
	from, err1 := time.ParseInLocation("2006-01-02T15:04:05", valid[1], time.Local)
	to, err2 := time.ParseInLocation("2006-01-02T15:04:05", valid[3], time.Local)
	if err1 != nil || err2 != nil {
		t.Fatalf("validity %q: %v %v", valid, err1, err2)
	}
	if life := to.Sub(from); life < 10*time.Minute || life > 11*time.Minute || time.Since(from) < 0 || time.Since(from) > 2*time.Minute {
		t.Fatalf("valid from %s to %s: want about now to now+10m", from, to)
	}

	// sshd on a loopback port, trusting Sigil's SSH CA and nothing else.
	resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + "/ssh/ssh/ca.pub")
	if err != nil {
		t.Fatal(err)
	}
	caPub, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(caPub), "ssh-ed25519 ") {
		t.Fatalf("CA key: %d %q", resp.StatusCode, caPub)
	}
	caPath := filepath.Join(dir, "ca.pub")
	hostKey := filepath.Join(dir, "host_ed25519")
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey)
	if err := os.WriteFile(caPath, caPub, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
TrustedUserCAKeys %s
AuthorizedKeysFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
LogLevel VERBOSE
`, port, hostKey, filepath.Join(dir, "sshd.pid"), caPath)), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Debian's sshd wants its privilege-separation directory.
		_ = os.MkdirAll("/run/sshd", 0o755)
	}
	sshd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	var sshdLog syncBuffer
	sshd.Stderr = &sshdLog
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sshd.Process.Kill()
		_ = sshd.Wait()
	})
	login := func(extra ...string) (string, error) {
		args := append([]string{"-i", keyPath, "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
			"-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", port},
			extra...)
		args = append(args, me.Username+"@127.0.0.1", "echo", "signed-in")
		out, err := exec.Command("ssh", args...).CombinedOutput()
		return string(out), err
	}
	var out string
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err = login("-o", "CertificateFile="+certPath)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // sshd still starting
	}
	if err != nil || !strings.Contains(out, "signed-in") {
		t.Fatalf("ssh with Sigil's certificate: %v: %s\nsshd:\n%s", err, out, sshdLog.String())
	}
	// The same key without its certificate is refused: only the CA grants.
	if out, err := login("-o", "CertificateFile=/dev/null"); err == nil {
		t.Fatalf("ssh without the certificate succeeded: %s", out)
	}
}

// between returns the text of s between two labels.
func between(s, from, to string) string {
	_, rest, _ := strings.Cut(s, from)
	rest, _, _ = strings.Cut(rest, to)
	return strings.TrimSpace(rest)
}
