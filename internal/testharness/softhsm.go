package testharness

import (
	"testing"

	"github.com/sigil-ca/sigil/hsm/hsmtest"
)

// SoftHSMModule is where Debian's softhsm2 package installs the module.
const SoftHSMModule = hsmtest.SoftHSMModule

// NewSoftHSMToken initialises a fresh SoftHSM2 token in a temporary
// directory and returns its RFC 7512 URI with the user PIN as pin-value:
//
//	pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=<label>?pin-value=<pin>
//
// It sets SOFTHSM2_CONF with t.Setenv, so the calling test must not use
// t.Parallel, and custody opened on an earlier token must be closed first.
// A missing SoftHSM2 fails the test with the command that installs it.
//
// The implementation lives in hsm/hsmtest, a leaf package, because hsm's own
// tests need it too and this package imports server (and so hsm): importing
// it from hsm's tests would tie them to every other package building.
func NewSoftHSMToken(t testing.TB) string {
	t.Helper()
	return hsmtest.NewSoftHSMToken(t)
}
