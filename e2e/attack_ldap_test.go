package e2e

import (
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/slapd"
)

// TestAttackLDAPLogin replays attacks on LDAP login through the built
// binary: filter and DN injection in usernames, an empty password (an
// unauthenticated bind that LDAP servers report as success), a dead
// directory. Each is refused with a clear error and audited; failures are
// rate-limited per source; no password reaches the audit log.
func TestAttackLDAPLogin(t *testing.T) {
	d, ds, dir := ldapSetup(t)
	tokenFile := filepath.Join(dir, "token")
	login := func(user, pw string) (string, int) {
		t.Helper()
		_, stderr, code := ldapCLI(t, d, tokenFile, pw+"\n", "login", "--method", "ldap", "--mount", "corp", "--username", user, "--no-store")
		return stderr, code
	}
	if stderr, code := login("alice", slapd.AlicePassword); code != 0 {
		t.Fatalf("baseline login: exit %d %s", code, stderr)
	}

	attacks := []struct{ name, user, pw, want string }{
		{"wildcard username", "*", slapd.AlicePassword, "invalid username or password"},
		{"filter injection", "alice)(uid=*", slapd.AlicePassword, "invalid username or password"},
		{"filter OR injection", "*)(|(uid=*", slapd.AlicePassword, "invalid username or password"},
		{"prefix wildcard matches one user", "admin*", slapd.AdminPassword, "invalid username or password"},
		{"suffix wildcard matches one user", "alic*", slapd.AlicePassword, "invalid username or password"},
		{"DN injection", "alice," + slapd.PeopleDN, slapd.AlicePassword, "invalid username or password"},
		{"service account DN as username", slapd.BindDN, slapd.BindPassword, "invalid username or password"},
		{"wrong password", "alice", "not-alices-password", "invalid username or password"},
		{"empty password", "alice", "", "empty password"},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			stderr, code := login(a.user, a.pw)
			if code == 0 || !strings.Contains(stderr, a.want) {
				t.Fatalf("exit %d, stderr %q, want a refusal containing %q", code, stderr, a.want)
			}
		})
	}

	// The directory goes away: a clear Unavailable within the timeouts,
	// not a hang, and not counted as a failed login.
	ds.Stop()
	start := time.Now()
	stderr, code := login("alice", slapd.AlicePassword)
	if code == 0 || !strings.Contains(stderr, "ldap server unavailable") {
		t.Fatalf("directory down: exit %d %s", code, stderr)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("directory down: login took %v", el)
	}

	// Per-source failure limiting: 9 failures so far (the outage did not
	// count); the 10th spends the burst of 10, the 11th blocks the source,
	// so even a correct login is refused. Empty passwords are refused
	// before the (dead) directory is asked, so they count.
	for range 2 {
		if stderr, code := login("alice", ""); code == 0 || !strings.Contains(stderr, "empty password") {
			t.Fatalf("empty password: exit %d %s", code, stderr)
		}
	}
	if stderr, code := login("alice", slapd.AlicePassword); code == 0 || !strings.Contains(stderr, "too many failed logins") {
		t.Fatalf("after repeated failures: exit %d %s, want rate-limited", code, stderr)
	}

	// Every attempt is audited, and no password is in the log.
	if out, stderr, code := d.cli(t, "audit", "verify", "--format", "json"); code != 0 || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("audit verify: %s %s", out, stderr)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(d.dataDir, "sigil.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT CAST(record AS TEXT) FROM audit_log WHERE CAST(record AS TEXT) GLOB '*AuthMethodService/Login*'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ok, refused int
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		for _, pw := range []string{slapd.AlicePassword, slapd.AdminPassword, slapd.BindPassword, "not-alices-password"} {
			if strings.Contains(r, pw) {
				t.Fatalf("audit record holds a password: %s", r)
			}
		}
		switch {
		case strings.Contains(r, `"allowed":true`):
			ok++
		case strings.Contains(r, `"allowed":false`):
			refused++
		}
	}
	// baseline; 9 attacks + unavailable + 2 empty + the rate-limited one.
	if ok != 1 || refused != len(attacks)+4 {
		t.Errorf("audit log has %d successful and %d refused logins, want 1 and %d", ok, refused, len(attacks)+4)
	}
}
