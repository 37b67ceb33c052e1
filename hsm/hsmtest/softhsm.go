package hsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SoftHSMModule is where Debian's softhsm2 package installs the module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

const softHSMMissing = "SoftHSM2 not found: run scripts/deps.sh (as root: apt-get install -y softhsm2 opensc)"

// NewSoftHSMToken initialises a fresh SoftHSM2 token in a temporary
// directory and returns its RFC 7512 URI with the user PIN as pin-value:
//
//	pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=<label>?pin-value=<pin>
//
// SoftHSM finds its token directory through the SOFTHSM2_CONF environment
// variable, read when the module is initialised (C_Initialize), so this sets
// it for the whole process with t.Setenv. Consequences: the test (and its
// parents) must not call t.Parallel (t.Setenv panics if they do), and every
// custody opened on an earlier token must be closed before a new token is
// used, because SoftHSM only rereads the configuration when the module is
// finalised and initialised again. The label and both PINs are random, so
// tokens from different tests never collide.
//
// If softhsm2-util or the module is missing the test fails (it is not
// skipped): a missing dependency must be installed, not ignored.
func NewSoftHSMToken(t testing.TB) string {
	t.Helper()
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatal(softHSMMissing)
	}
	if _, err := os.Stat(SoftHSMModule); err != nil {
		t.Fatal(softHSMMissing)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)

	label := "sigil-test-" + randomHex(t, 4)
	soPIN, pin := randomHex(t, 8), randomHex(t, 8)
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", pin)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		// The output never contains the PINs (they are arguments, not echoed).
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return "pkcs11:module-path=" + SoftHSMModule + ";token=" + label + "?pin-value=" + url.QueryEscape(pin)
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
