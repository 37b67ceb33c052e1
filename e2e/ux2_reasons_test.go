package e2e

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"
)

// TestUx2EngineConfigureGivesTheReason replays the review's `engine
// configure` cases, which all answered "internal error (Internal)": the
// database's own reason now reaches the user, with the right code, and the
// password never does.
func TestUx2EngineConfigureGivesTheReason(t *testing.T) {
	pg := newPGTarget(t)
	if _, err := pg.admin.Exec(`CREATE ROLE ux2_weak LOGIN PASSWORD 'ux2-weak-pw'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pg.admin.Exec(`DROP ROLE IF EXISTS ux2_weak`) })
	withUser := func(user, pw string) string {
		u, err := url.Parse(pg.dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(user, pw)
		return u.String()
	}
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	if _, stderr, code := d.cli(t, "engine", "enable", "postgres", "--mount", "ux2db"); code != 0 {
		t.Fatalf("engine enable: %s", stderr)
	}
	tests := []struct {
		name, dsn string
		want      []string
	}{
		{"missing role", withUser("ux2_nosuch", "secret-pw-1"), []string{`password authentication failed for user "ux2_nosuch"`, "FailedPrecondition"}},
		{"unreachable database", pg.dsnVia(t, freeAddr(t)), []string{"connect", "refused", "Unavailable"}},
		{"missing privileges", withUser("ux2_weak", "ux2-weak-pw"), []string{`user "ux2_weak" may not create roles`, "CREATEROLE", "FailedPrecondition"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := d.cli(t, "engine", "configure", "ux2db", "connection_url="+tc.dsn)
			if code != 1 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q: %s", w, stderr)
				}
			}
			if strings.Contains(stderr, "internal error") || !strings.Contains(stderr, "request id") {
				t.Errorf("not the real reason with a request id: %s", stderr)
			}
			if u, _ := url.Parse(tc.dsn); u != nil {
				if pw, ok := u.User.Password(); ok && strings.Contains(stderr, pw) {
					t.Errorf("the password reached the user: %s", stderr)
				}
			}
		})
	}
}
