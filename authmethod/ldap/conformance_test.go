package ldap_test

import (
	"testing"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/authmethod/authmethodtest"
	"github.com/sigil-ca/sigil/authmethod/ldap"
	"github.com/sigil-ca/sigil/internal/slapd"
)

// TestConformance runs the auth-method contract against a real slapd.
func TestConformance(t *testing.T) {
	s := slapd.ForTest(t)
	authmethodtest.Run(t, authmethodtest.Fixture{
		Type: ldap.NewType(nil),
		Config: map[string]string{
			"url": s.URL(), "starttls": "true", "certificate": string(s.CAPEM()),
			"binddn": slapd.BindDN, "bindpass": slapd.BindPassword,
			"userdn": slapd.PeopleDN, "userattr": "uid", "groupdn": slapd.GroupsDN,
		},
		Good: authmethod.Credentials{Username: "alice", Password: slapd.AlicePassword},
		Bad:  authmethod.Credentials{Username: "alice", Password: "not-alices"},
	})
}
