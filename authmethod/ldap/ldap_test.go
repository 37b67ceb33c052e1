package ldap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/sigil-ca/sigil/internal/slapd"
)

// searchConfig is search-then-bind with the service account over StartTLS
// with the harness CA pinned, groups by group search.
func searchConfig(s *slapd.Server) map[string]string {
	return map[string]string{
		"url": s.URL(), "starttls": "true", "certificate": string(s.CAPEM()),
		"binddn": slapd.BindDN, "bindpass": slapd.BindPassword,
		"userdn": slapd.PeopleDN, "userattr": "uid",
		"groupdn": slapd.GroupsDN, "groupfilter": "(&(objectClass=groupOfNames)(member={{.UserDN}}))", "groupattr": "cn",
	}
}

func with(base map[string]string, kv ...string) map[string]string {
	m := make(map[string]string, len(base))
	for k, v := range base {
		m[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(m, kv[i])
		} else {
			m[kv[i]] = kv[i+1]
		}
	}
	return m
}

func newClient(t *testing.T, kv map[string]string) *Client {
	t.Helper()
	cfg, err := ParseConfig(kv)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	c := New(cfg, nil)
	t.Cleanup(c.Close)
	return c
}

func TestLoginAgainstSlapd(t *testing.T) {
	s := slapd.ForTest(t)
	search := searchConfig(s)
	configs := map[string]map[string]string{
		"search-then-bind starttls": search,
		"search-then-bind ldaps":    with(search, "url", s.LDAPSURL(), "starttls", ""),
		"direct bind by DN":         with(search, "binddn", "", "bindpass", ""),
		"memberOf": with(search, "groupdn", slapd.PeopleDN,
			"groupfilter", "(&(objectClass=inetOrgPerson)(uid={{.Username}}))", "groupattr", "memberOf"),
		"default group filter":   with(search, "groupfilter", ""),
		"failover to second url": with(search, "url", "ldap://127.0.0.1:"+closedPort(t)+","+s.URL()),
	}
	users := []struct {
		name, username, password string
		groups                   []string
	}{
		{"alice in ops", "alice", slapd.AlicePassword, []string{"all", "ops"}},
		{"bob not in ops", "bob", slapd.BobPassword, []string{"all", "dev"}},
		{"special characters", slapd.CarolUID, slapd.CarolPassword, []string{"ops"}},
		{"no groups", slapd.AdminUID, slapd.AdminPassword, nil},
		{"case folded", "ALICE", slapd.AlicePassword, []string{"all", "ops"}},
	}
	for cname, kv := range configs {
		c := newClient(t, kv)
		for _, u := range users {
			t.Run(cname+"/"+u.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				res, err := c.Login(ctx, u.username, u.password)
				if err != nil {
					t.Fatalf("Login(%q): %v\n%s", u.username, err, s.Log())
				}
				if !slices.Equal(res.Groups, u.groups) {
					t.Fatalf("groups = %q, want %q", res.Groups, u.groups)
				}
				want := u.username
				if want == "ALICE" {
					want = "alice" // the directory's spelling
				}
				if res.Username != want {
					t.Fatalf("Username = %q, want %q", res.Username, want)
				}
				got, err1 := goldap.ParseDN(res.DN)
				exp, err2 := goldap.ParseDN(slapd.UserDN(u.username))
				if err1 != nil || err2 != nil || !got.EqualFold(exp) {
					t.Fatalf("DN = %q, want %q", res.DN, slapd.UserDN(u.username))
				}
				if _, err := c.Login(ctx, u.username, u.password+"x"); !errors.Is(err, ErrInvalidCredentials) {
					t.Fatalf("wrong password: err = %v, want ErrInvalidCredentials", err)
				}
			})
		}
	}
}

// TestLoginRefusesInjection replays filter and DN injection usernames with
// real passwords: escaped, they name no user. Unescaped, "admin*" and
// "alic*" would match exactly one user and log in with that user's password.
func TestLoginRefusesInjection(t *testing.T) {
	s := slapd.ForTest(t)
	search := searchConfig(s)
	modes := map[string]map[string]string{
		"search":             search,
		"direct":             with(search, "binddn", "", "bindpass", ""),
		"direct cn userattr": with(search, "binddn", "", "bindpass", "", "userattr", "cn"),
	}
	attacks := []struct{ username, password string }{
		{"*", slapd.AlicePassword},
		{"alice)(uid=*", slapd.AlicePassword},
		{"alice)(|(uid=*", slapd.AlicePassword},
		{"*)(uid=*))(|(uid=*", slapd.AlicePassword},
		{"admin*", slapd.AdminPassword},
		{"alic*", slapd.AlicePassword},
		{"*lice", slapd.AlicePassword},
		{`alice\2a`, slapd.AlicePassword},
		{"alice\\", slapd.AlicePassword},
		{"alice,ou=people", slapd.AlicePassword},
		{"alice," + slapd.PeopleDN, slapd.AlicePassword},
		{"x,uid=alice", slapd.AlicePassword},
		{"alice+cn=alice", slapd.AlicePassword},
		{"carol*", slapd.CarolPassword},
		{"cn=sigil-svc," + slapd.ServicesDN, slapd.BindPassword},
	}
	for mode, kv := range modes {
		c := newClient(t, kv)
		for _, a := range attacks {
			t.Run(mode+"/"+a.username, func(t *testing.T) {
				res, err := c.Login(context.Background(), a.username, a.password)
				if err == nil {
					t.Fatalf("Login(%q) authenticated as %q with groups %q", a.username, res.DN, res.Groups)
				}
				if !errors.Is(err, ErrInvalidCredentials) {
					t.Fatalf("Login(%q): err = %v, want ErrInvalidCredentials", a.username, err)
				}
			})
		}
	}
}

// TestLoginRefusesBadInputWithoutNetwork: an empty password (which LDAP
// treats as an unauthenticated bind that "succeeds") and other malformed
// requests are refused before any connection is made.
func TestLoginRefusesBadInputWithoutNetwork(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conn.Close()
		}
	}()
	c := newClient(t, map[string]string{
		"url": "ldap://" + l.Addr().String(), "binddn": slapd.BindDN, "bindpass": "x", "userdn": slapd.PeopleDN,
	})
	for _, tc := range []struct{ name, username, password string }{
		{"empty password", "alice", ""},
		{"empty username", "", "pw"},
		{"blank username", "  ", "pw"},
		{"leading space", " alice", "pw"},
		{"trailing space", "alice ", "pw"},
		{"NUL in username", "alice\x00", "pw"},
		{"invalid UTF-8", "alice\xff", "pw"},
		{"oversized username", strings.Repeat("a", 300), "pw"},
		{"oversized password", "alice", strings.Repeat("p", 2000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Login(context.Background(), tc.username, tc.password)
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("err = %v, want ErrInvalidInput", err)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d connections were made for refused input", n)
	}
}

// TestEmptyPasswordWouldBindOnTheServer shows why the empty password check
// matters: the directory itself is the one thing that must not decide.
func TestLoginEmptyPasswordAgainstSlapd(t *testing.T) {
	s := slapd.ForTest(t)
	for _, kv := range []map[string]string{searchConfig(s), with(searchConfig(s), "binddn", "", "bindpass", "")} {
		c := newClient(t, kv)
		if res, err := c.Login(context.Background(), "alice", ""); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("empty password: res %+v err %v, want ErrInvalidInput", res, err)
		}
	}
}

func TestTLSPinning(t *testing.T) {
	s := slapd.ForTest(t)
	_, _, otherCA, err := slapd.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	search := searchConfig(s)
	for _, tc := range []struct {
		name string
		kv   map[string]string
		ok   bool
	}{
		{"starttls pinned CA", search, true},
		{"ldaps pinned CA", with(search, "url", s.LDAPSURL(), "starttls", ""), true},
		{"starttls wrong CA", with(search, "certificate", string(otherCA)), false},
		{"ldaps wrong CA", with(search, "url", s.LDAPSURL(), "starttls", "", "certificate", string(otherCA)), false},
		{"ldaps system roots", with(search, "url", s.LDAPSURL(), "starttls", "", "certificate", ""), false},
		{"ldaps name mismatch", with(search, "url", strings.Replace(s.LDAPSURL(), "127.0.0.1", "127.0.0.2", 1), "starttls", ""), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, tc.kv)
			res, err := c.Login(context.Background(), "alice", slapd.AlicePassword)
			if tc.ok {
				if err != nil || !slices.Contains(res.Groups, "ops") {
					t.Fatalf("res %+v err %v", res, err)
				}
				return
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want ErrUnavailable", err)
			}
		})
	}
}

// TestUnavailable: a stopped server, and one that accepts connections but
// never answers, both give ErrUnavailable within the configured timeouts.
func TestUnavailable(t *testing.T) {
	s := slapd.ForTest(t)
	kv := with(searchConfig(s), "request_timeout", "1s", "connection_timeout", "1s")
	c := newClient(t, kv)
	if _, err := c.Login(context.Background(), "alice", slapd.AlicePassword); err != nil {
		t.Fatalf("login before stop: %v", err)
	}
	s.Stop()

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn // held open, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()
	for _, tc := range []struct {
		name string
		c    *Client
	}{
		{"stopped server, pooled connection", c},
		{"stopped server, new client", newClient(t, kv)},
		{"silent server starttls", newClient(t, with(kv, "url", "ldap://"+silent.Addr().String()))},
		{"silent server plain", newClient(t, with(kv, "url", "ldap://"+silent.Addr().String(), "starttls", ""))},
		{"silent server ldaps", newClient(t, with(kv, "url", "ldaps://"+silent.Addr().String(), "starttls", ""))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := tc.c.Login(context.Background(), "alice", slapd.AlicePassword)
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want ErrUnavailable", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %v, want about the 1s timeout", d)
			}
		})
	}
}

// TestPoolReusesAndHeals: the service connection is re-used between
// logins, and one that died while pooled is replaced transparently.
func TestPoolReusesAndHeals(t *testing.T) {
	s := slapd.ForTest(t)
	c := newClient(t, searchConfig(s))
	ctx := context.Background()
	if _, err := c.Login(ctx, "alice", slapd.AlicePassword); err != nil {
		t.Fatal(err)
	}
	if len(c.idle) != 1 {
		t.Fatalf("pool holds %d connections, want 1", len(c.idle))
	}
	first := c.idle[0]
	if _, err := c.Login(ctx, "bob", slapd.BobPassword); err != nil {
		t.Fatal(err)
	}
	if len(c.idle) != 1 || c.idle[0] != first {
		t.Fatal("second login did not re-use the pooled connection")
	}
	// A failed login must not leave the user's bind on a pooled connection.
	if _, err := c.Login(ctx, "bob", "wrong"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatal(err)
	}
	for _, k := range c.idle {
		if !k.asSvc {
			t.Fatal("pooled connection not bound as the service account")
		}
	}
	// Kill the pooled connection's socket under it.
	if len(c.idle) == 0 {
		if _, err := c.Login(ctx, "alice", slapd.AlicePassword); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.idle[len(c.idle)-1].raw.Close()
	res, err := c.Login(ctx, "alice", slapd.AlicePassword)
	if err != nil || !slices.Contains(res.Groups, "ops") {
		t.Fatalf("login after a pooled connection died: %+v %v", res, err)
	}
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

// TestConcurrentLogins: many logins at once share the pool safely (run with
// -race), each gets its own user's groups, and the pool stays bounded.
func TestConcurrentLogins(t *testing.T) {
	s := slapd.ForTest(t)
	c := newClient(t, searchConfig(s))
	users := []struct {
		name, pw, group string
		ok              bool
	}{
		{"alice", slapd.AlicePassword, "ops", true},
		{"bob", slapd.BobPassword, "dev", true},
		{"alice", "wrong", "", false},
		{"*", slapd.AlicePassword, "", false},
	}
	errc := make(chan error, 64)
	var wg sync.WaitGroup
	for i := range 32 {
		u := users[i%len(users)]
		wg.Go(func() {
			res, err := c.Login(context.Background(), u.name, u.pw)
			switch {
			case u.ok && (err != nil || !slices.Contains(res.Groups, u.group) || res.Username != u.name):
				errc <- fmt.Errorf("%s: %+v %v", u.name, res, err)
			case !u.ok && !errors.Is(err, ErrInvalidCredentials):
				errc <- fmt.Errorf("%s with a bad password: %v", u.name, err)
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if n := len(c.idle); n > poolSize {
		t.Fatalf("pool holds %d connections, more than %d", n, poolSize)
	}
}
