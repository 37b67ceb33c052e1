package ldap_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/slapd"
	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestLDAPMountOverGRPC drives the ldap method through a real Sigil server
// and a real slapd: groups map to policies, refused logins get the right
// codes, failures are rate-limited per source, and a dead directory is
// Unavailable without counting as a failure.
func TestLDAPMountOverGRPC(t *testing.T) {
	dir := slapd.ForTest(t)
	sg := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	am := sigilv1.NewAuthMethodServiceClient(sg.Conn)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(am.Enable(ctx, &sigilv1.EnableAuthRequest{Type: "ldap", Mount: "corp"}))
	cfg := map[string]string{
		"url": dir.URL(), "starttls": "true", "certificate": string(dir.CAPEM()),
		"binddn": slapd.BindDN, "bindpass": slapd.BindPassword,
		"userdn": slapd.PeopleDN, "userattr": "uid", "groupdn": slapd.GroupsDN,
		"request_timeout": "2s", "connection_timeout": "2s",
	}
	must(am.Configure(ctx, &sigilv1.ConfigureAuthRequest{Mount: "corp", Config: cfg}))
	must(am.WriteGroup(ctx, &sigilv1.WriteAuthGroupRequest{Mount: "corp", Group: "ops", Fields: map[string]string{"token_policies": "ops"}}))
	must(am.WriteGroup(ctx, &sigilv1.WriteAuthGroupRequest{Mount: "corp", Group: "dev", Fields: map[string]string{"token_policies": "dev"}}))

	// Bad configurations are refused with InvalidArgument naming the key.
	for key, val := range map[string]string{"insecure_tls": "true", "url": "http://ldap.example.com", "request_timeout": "forever", "groupfilter": "(member={{.Nope}})", "deny_null_bind": "false"} {
		bad := map[string]string{}
		for k, v := range cfg {
			bad[k] = v
		}
		bad[key] = val
		_, err := am.Configure(ctx, &sigilv1.ConfigureAuthRequest{Mount: "corp", Config: bad})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), key) {
			t.Errorf("configure %s=%s: %v, want InvalidArgument naming %s", key, val, err, key)
		}
	}
	if _, err := am.WriteRole(ctx, &sigilv1.WriteAuthRoleRequest{Mount: "corp", Role: "r", Fields: map[string]string{"token_policies": "ops"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("role write on an ldap mount: %v, want InvalidArgument", err)
	}

	_, rcpt, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	r := &sigilv1.Recipient{Kem: uint32(rcpt.KEM), PublicKey: rcpt.PublicKey}
	login := func(user, pw string) (*sigilv1.AuthLoginResponse, error) {
		return am.Login(ctx, &sigilv1.AuthLoginRequest{Mount: "corp", Username: user, Password: pw, Recipient: r})
	}

	for _, tc := range []struct {
		user, pw string
		policies []string
	}{
		{"alice", slapd.AlicePassword, []string{"ops"}},
		{"bob", slapd.BobPassword, []string{"dev"}},
		{slapd.CarolUID, slapd.CarolPassword, []string{"ops"}},
	} {
		res, err := login(tc.user, tc.pw)
		if err != nil {
			t.Fatalf("login %s: %v", tc.user, err)
		}
		if !slices.Equal(res.GetPolicies(), tc.policies) || res.GetIdentity() != tc.user || len(res.GetEnvelope()) == 0 {
			t.Fatalf("login %s: policies %v identity %q, want %v", tc.user, res.GetPolicies(), res.GetIdentity(), tc.policies)
		}
	}
	// In no group that maps to a policy: deny by default.
	if _, err := login(slapd.AdminUID, slapd.AdminPassword); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("user without mapped groups: %v, want PermissionDenied", err)
	}

	// The directory goes away: Unavailable, quickly, and not a failure.
	dir.Stop()
	for range 12 {
		start := time.Now()
		_, err := login("alice", slapd.AlicePassword)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("directory down: %v, want Unavailable", err)
		}
		if strings.Contains(err.Error(), "127.0.0.1") {
			t.Fatalf("Unavailable message reveals the directory address: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("directory down: took %v", d)
		}
	}

	// Refused attempts: each the right code. With the refused login of the
	// user without policies that makes 11 failures: the 11th finds the
	// budget of 10 spent and blocks the source.
	dir2 := slapd.ForTest(t)
	cfg["url"], cfg["certificate"] = dir2.URL(), string(dir2.CAPEM())
	must(am.Configure(ctx, &sigilv1.ConfigureAuthRequest{Mount: "corp", Config: cfg}))
	attempts := []struct {
		user, pw string
		code     codes.Code
	}{
		{"alice", "", codes.InvalidArgument},
		{"alice", "wrong", codes.PermissionDenied},
		{"*", slapd.AlicePassword, codes.PermissionDenied},
		{"alice)(uid=*", slapd.AlicePassword, codes.PermissionDenied},
		{"admin*", slapd.AdminPassword, codes.PermissionDenied},
		{"alic*", slapd.AlicePassword, codes.PermissionDenied},
		{"nobody", "x", codes.PermissionDenied},
		{"", "x", codes.InvalidArgument},
		{"bob", "", codes.InvalidArgument},
		{"bob", "wrong", codes.PermissionDenied},
	}
	for _, a := range attempts {
		if _, err := login(a.user, a.pw); status.Code(err) != a.code {
			t.Fatalf("login %q: %v, want %v", a.user, err, a.code)
		}
	}
	// Blocked now, even with the right password.
	if _, err := login("alice", slapd.AlicePassword); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("after %d failures: %v, want ResourceExhausted", len(attempts)+1, err)
	}
}
