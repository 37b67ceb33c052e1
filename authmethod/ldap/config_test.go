package ldap

import (
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

func validConfig() map[string]string {
	return map[string]string{
		"url": "ldaps://ldap.example.test", "binddn": "cn=svc,dc=example,dc=test", "bindpass": "pw",
		"userdn": "ou=people,dc=example,dc=test", "userattr": "uid", "groupdn": "ou=groups,dc=example,dc=test",
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kv      map[string]string
		wantErr string // substring naming what was wrong; "" = valid
		check   func(*testing.T, *Config)
	}{
		{"valid with defaults", validConfig(), "", func(t *testing.T, c *Config) {
			if c.GroupAttr != "cn" || c.GroupFilter != DefaultGroupFilter || c.RequestTimeout != DefaultRequestTimeout {
				t.Fatalf("defaults not applied: %+v", c)
			}
		}},
		{"several urls in order", with(validConfig(), "url", "ldaps://a.test, ldaps://b.test:1636"), "", func(t *testing.T, c *Config) {
			if len(c.URLs) != 2 || c.URLs[0].Host != "a.test" || c.URLs[1].Host != "b.test:1636" {
				t.Fatalf("urls = %v", c.URLs)
			}
		}},
		{"vault seconds timeout", with(validConfig(), "request_timeout", "7"), "", func(t *testing.T, c *Config) {
			if c.RequestTimeout != 7*time.Second {
				t.Fatalf("timeout %v", c.RequestTimeout)
			}
		}},
		{"duration timeout", with(validConfig(), "connection_timeout", "1500ms"), "", nil},
		{"starttls on ldap", with(validConfig(), "url", "ldap://ldap.example.test", "starttls", "true"), "", nil},
		{"plain ldap to loopback", with(validConfig(), "url", "ldap://127.0.0.1:3389"), "", nil},
		{"direct bind", with(validConfig(), "binddn", "", "bindpass", ""), "", nil},
		{"deny_null_bind true", with(validConfig(), "deny_null_bind", "true"), "", nil},
		{"insecure_tls false", with(validConfig(), "insecure_tls", "false"), "", nil},

		{"unknown key", with(validConfig(), "bindpassword", "x"), `unknown key "bindpassword"`, nil},
		{"no url", with(validConfig(), "url", ""), "url is required", nil},
		{"plain ldap remote", with(validConfig(), "url", "ldap://ldap.example.test"), "clear", nil},
		{"one plain url among tls", with(validConfig(), "url", "ldaps://a.test,ldap://b.test"), "clear", nil},
		{"bad scheme", with(validConfig(), "url", "http://ldap.example.test"), "scheme", nil},
		{"url with path", with(validConfig(), "url", "ldaps://h/dc=x"), "only scheme", nil},
		{"url with user", with(validConfig(), "url", "ldaps://u:p@h"), "only scheme", nil},
		{"url bad port", with(validConfig(), "url", "ldaps://h:99999"), "port", nil},
		{"starttls with ldaps", with(validConfig(), "starttls", "true"), "already ldaps", nil},
		{"insecure_tls", with(validConfig(), "insecure_tls", "true"), "insecure_tls", nil},
		{"deny_null_bind false", with(validConfig(), "deny_null_bind", "false"), "deny_null_bind", nil},
		{"bad bool", with(validConfig(), "starttls", "yes please"), "starttls", nil},
		{"binddn without bindpass", with(validConfig(), "bindpass", ""), "binddn and bindpass", nil},
		{"bindpass without binddn", with(validConfig(), "binddn", ""), "binddn and bindpass", nil},
		{"no userdn", with(validConfig(), "userdn", ""), "userdn is required", nil},
		{"userdn not a DN", with(validConfig(), "userdn", "people"), "userdn", nil},
		{"discoverdn anonymous", with(validConfig(), "binddn", "", "bindpass", "", "discoverdn", "true"), "discoverdn", nil},
		{"bad userattr", with(validConfig(), "userattr", "uid)(x"), "userattr", nil},
		{"bad groupattr", with(validConfig(), "groupattr", "cn=*"), "groupattr", nil},
		{"bad upndomain", with(validConfig(), "upndomain", "a@b"), "upndomain", nil},
		{"groupfilter bad template", with(validConfig(), "groupfilter", "(member={{.UserDN}"), "groupfilter", nil},
		{"groupfilter unknown field", with(validConfig(), "groupfilter", "(member={{.Password}})"), "groupfilter", nil},
		{"groupfilter not a filter", with(validConfig(), "groupfilter", "member={{.UserDN}}"), "not an LDAP filter", nil},
		{"userfilter not a filter", with(validConfig(), "userfilter", "(uid={{.Username}}"), "userfilter", nil},
		{"timeout zero", with(validConfig(), "request_timeout", "0"), "request_timeout", nil},
		{"timeout huge", with(validConfig(), "request_timeout", "1h"), "request_timeout", nil},
		{"timeout words", with(validConfig(), "request_timeout", "soon"), "request_timeout", nil},
		{"certificate not PEM", with(validConfig(), "certificate", "hello"), "certificate", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.kv)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				if c.BindPass != "" && c.Map()["bindpass"] == c.BindPass {
					t.Fatal("Map shows the bind password")
				}
				// The stored form parses back to the same configuration.
				again, err := ParseConfig(c.Stored())
				if err != nil {
					t.Fatalf("stored form does not parse: %v", err)
				}
				if !maps.Equal(again.Stored(), c.Stored()) {
					t.Fatalf("stored form changed on reparse:\n%v\n%v", c.Stored(), again.Stored())
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrConfig naming %q", err, tc.wantErr)
			}
		})
	}
}

// filterShape is a filter with its assertion values blanked: two filters
// with the same shape differ only in the values they compare.
func filterShape(t testing.TB, filter string) string {
	t.Helper()
	p, err := goldap.CompileFilter(filter)
	if err != nil {
		t.Fatalf("rendered filter %q does not compile: %v", filter, err)
	}
	d, err := goldap.DecompileFilter(p)
	if err != nil {
		t.Fatalf("decompile %q: %v", filter, err)
	}
	// Values never hold ( ) or * unescaped after escaping, so removing the
	// text between '=' and ')' leaves the structure.
	var b strings.Builder
	skip := false
	for _, r := range d {
		switch {
		case r == '=' && !skip:
			skip = true
			b.WriteRune(r)
		case r == ')':
			skip = false
			b.WriteRune(r)
		case !skip:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// FuzzFilterTemplates: whatever the username, the rendered user and group
// filters compile and keep the structure the template gives them (no
// injected clause, no wildcard), and the username comes back unchanged as
// the asserted value.
func FuzzFilterTemplates(f *testing.F) {
	for _, s := range []string{"alice", "*", "alice)(uid=*", "admin*", `a\2a`, "\x00", "é(", "*)(|(objectClass=*"} {
		f.Add(s)
	}
	kv := with(validConfig(), "groupfilter", DefaultGroupFilter)
	cfg, err := ParseConfig(kv)
	if err != nil {
		f.Fatal(err)
	}
	wantUser := filterShape(f, "(uid=x)")
	wantGroup := filterShape(f, "(|(memberUid=x)(member=x)(uniqueMember=x))")
	f.Fuzz(func(t *testing.T, username string) {
		uf, err := cfg.userFilterFor(username)
		if err != nil {
			t.Fatal(err)
		}
		if got := filterShape(t, uf); got != wantUser {
			t.Fatalf("username %q changed the user filter to %q", username, uf)
		}
		p, _ := goldap.CompileFilter(uf)
		if p.Tag != goldap.FilterEqualityMatch || len(p.Children) != 2 || p.Children[1].Data.String() != username {
			t.Fatalf("username %q is not the literal value of %q", username, uf)
		}
		gf, err := cfg.groupFilterFor(username, "uid="+goldap.EscapeDN(username)+",dc=x")
		if err != nil {
			t.Fatal(err)
		}
		if got := filterShape(t, gf); got != wantGroup {
			t.Fatalf("username %q changed the group filter to %q", username, gf)
		}
	})
}

// FuzzParseConfig: the parser never panics, and whatever it accepts is
// usable: TLS or loopback for every URL, a user DN, filters that render.
func FuzzParseConfig(f *testing.F) {
	f.Add("ldaps://h", "ou=p,dc=x", "uid", DefaultGroupFilter, "cn", "10s", "false")
	f.Add("ldap://h,ldaps://i", "dc=x", "cn", "(member={{.UserDN}})", "memberOf", "5", "true")
	f.Add("ldap://127.0.0.1:1", "", "u;x", "{{.Foo}}", "", "-1", "")
	f.Fuzz(func(t *testing.T, url, userdn, userattr, groupfilter, groupattr, timeout, starttls string) {
		c, err := ParseConfig(map[string]string{
			"url": url, "userdn": userdn, "userattr": userattr, "groupdn": "ou=g,dc=x",
			"groupfilter": groupfilter, "groupattr": groupattr, "request_timeout": timeout, "starttls": starttls,
		})
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error does not wrap ErrConfig: %v", err)
			}
			return
		}
		for _, u := range c.URLs {
			if u.Scheme != "ldaps" && !c.StartTLS && !isLoopback(u.Hostname()) {
				t.Fatalf("accepted clear-text url %v", u)
			}
		}
		if c.UserDN == "" || c.RequestTimeout <= 0 || c.RequestTimeout > maxTimeout {
			t.Fatalf("accepted %+v", c)
		}
		for _, name := range []string{"alice", "*)(x=*"} {
			gf, err := c.groupFilterFor(name, "uid=a,dc=x")
			if err != nil {
				t.Fatalf("group filter does not render: %v", err)
			}
			if _, err := goldap.CompileFilter(gf); err != nil {
				t.Fatalf("group filter %q does not compile: %v", gf, err)
			}
		}
	})
}
