package ca

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

const cfsslJSON = `{
  "signing": {
    "default": {"expiry": "168h", "usages": ["signing", "key encipherment", "server auth"]},
    "profiles": {
      "www": {"expiry": "720h", "usages": ["signing", "server auth"], "name_whitelist": "\\.example\\.test$"},
      "peer": {"expiry": "24h", "usages": ["digital signature", "server auth", "client auth"]},
      "subca": {"expiry": "8760h", "usages": ["cert sign", "crl sign"], "ca_constraint": {"is_ca": true, "max_path_len": 0, "max_path_len_zero": true}}
    }
  }
}`

func TestProfilesFromCFSSL(t *testing.T) {
	ctx := context.Background()
	profiles, err := ProfilesFromCFSSL([]byte(cfsslJSON))
	if err != nil {
		t.Fatal(err)
	}
	if len(profiles) != 4 {
		t.Fatalf("%d profiles, want default, www, peer, subca", len(profiles))
	}
	www := profiles["www"]
	if www.MaxTTL != 720*time.Hour || www.NameRegexp == "" || strings.Join(www.ExtKeyUsage, ",") != "server auth" {
		t.Fatalf("www: %+v", www)
	}
	if sub := profiles["subca"]; !sub.IsCA || sub.MaxPathLen != 0 {
		t.Fatalf("subca: %+v", sub)
	}
	cfg := testConfig()
	cfg.Profiles = profiles
	e := newEnv(t, cfg, true)
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "a.example.test"), Profile: "www"})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Certificate
	if c.NotAfter.Sub(c.NotBefore) != 720*time.Hour+time.Minute || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Fatalf("www certificate: %v %v", c.NotAfter.Sub(c.NotBefore), c.ExtKeyUsage)
	}
	assertLintClean(t, e.ca, "cfssl www", iss.DER)
	if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "a.example.com"), Profile: "www"}); KindOf(err) != KindPolicyViolation || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("name_whitelist: %v", err)
	}

	bad := []struct{ name, json, want string }{
		{"syntax", `{`, "cfssl config"},
		{"no signing", `{"auth_keys": {}}`, "signing"},
		{"unknown usage", `{"signing": {"default": {"expiry": "1h", "usages": ["teleport"]}}}`, "unknown usage"},
		{"remote", `{"signing": {"default": {"expiry": "1h", "usages": ["signing"], "remote": "x"}}, "remotes": {"x": "127.0.0.1:8888"}}`, "remote signing"},
	}
	for _, tc := range bad {
		if _, err := ProfilesFromCFSSL([]byte(tc.json)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	good := testConfig()
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no public URL", func(c *Config) { c.PublicURL = "" }, "PublicURL is required"},
		{"relative public URL", func(c *Config) { c.PublicURL = "ca.example" }, "absolute http(s) URL"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "Bad Domain" }, "TrustDomain"},
		{"bad key type", func(c *Config) { c.KeyType = "dsa-1024" }, "KeyType"},
		{"bad profile usage", func(c *Config) {
			c.Profiles = map[string]ProfileConfig{"x": {KeyUsage: []string{"levitation"}}}
		}, "unknown key usage"},
		{"reserved profile", func(c *Config) {
			c.Profiles = map[string]ProfileConfig{profileOCSPSigner: {KeyUsage: []string{"signing"}}}
		}, "reserved"},
		{"bad CIDR", func(c *Config) {
			c.Profiles = map[string]ProfileConfig{"x": {KeyUsage: []string{"signing"}, IPRanges: []string{"10.0.0.0/33"}}}
		}, "IP range"},
		{"leaf with cert sign", func(c *Config) {
			c.Profiles = map[string]ProfileConfig{"x": {KeyUsage: []string{"cert sign"}}}
		}, "need IsCA"},
		{"short OCSP signer", func(c *Config) { c.OCSPSignerTTL = time.Hour }, "OCSPSignerTTL"},
	}
	e := newEnv(t, good, false)
	for _, tc := range tests {
		cfg := testConfig()
		tc.mod(&cfg)
		if _, err := New(e.custody, e.store, cfg, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
	if names := e.ca.ProfileNames(); strings.Join(names, ",") != "client,intermediate,server,workload" {
		t.Fatalf("profile names %v", names)
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "anything", true},
		{"*.example.test", "a.example.test", true},
		{"*.example.test", "a.b.example.test", true},
		{"*.example.test", "example.test", false},
		{"*.example.test", "a.example.test.evil", false},
		{"spiffe://td/ns/*/sa/*", "spiffe://td/ns/prod/sa/api", true},
		{"spiffe://td/ns/*/sa/*", "spiffe://td/ns/prod/x", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "ac", false},
		{"exact", "exact", true},
		{"*@example.com", "bob@example.com", true},
		{"*@example.com", "bob@example.com.evil", false},
	}
	for _, tc := range tests {
		if got := glob(tc.pattern, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v", tc.pattern, tc.s, got)
		}
	}
}

func TestInventory(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{t: time.Now()}
	cfg := testConfig()
	cfg.Now = clk.Now
	cfg.PruneGrace = 24 * time.Hour
	cfg.PruneBatch = 3
	e := newEnv(t, cfg, true)
	a := e.ca
	var short []*Issued
	for i := 0; i < 7; i++ {
		iss, err := a.Sign(ctx, SignRequest{CSR: csrFor(t, mustKey(t, elliptic.P256()), "", nil, nil, []string{"spiffe://example.org/w"}, nil), Profile: "workload"})
		if err != nil {
			t.Fatal(err)
		}
		short = append(short, iss)
	}
	long := issueN(t, a, 2)
	if err := a.Revoke(ctx, long[0].Record.Serial, ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	// By name, revoked, expiring, pagination.
	list, _, err := a.List(ctx, storageFilter{name: "spiffe://example.org/w"}.f())
	if err != nil || len(list) != 7 {
		t.Fatalf("by name: %d %v", len(list), err)
	}
	list, _, _ = a.List(ctx, storageFilter{revoked: true}.f())
	if len(list) != 1 || list[0].Serial != long[0].Record.Serial {
		t.Fatalf("revoked: %d", len(list))
	}
	list, _, _ = a.List(ctx, storageFilter{expiringBefore: clk.Now().Add(2 * time.Hour)}.f())
	if len(list) != 7 {
		t.Fatalf("expiring: %d", len(list))
	}
	page, next, _ := a.List(ctx, storageFilter{limit: 4}.f())
	if len(page) != 4 || next == "" {
		t.Fatal("pagination")
	}
	if _, err := a.Get(ctx, "123456"); KindOf(err) != KindNotFound {
		t.Fatalf("Get unknown: %v", err)
	}
	// Nothing to prune within the grace period, then all seven in batches.
	clk.Add(2 * time.Hour)
	if n, err := a.PruneExpired(ctx); err != nil || n != 0 {
		t.Fatalf("prune within grace: %d %v", n, err)
	}
	clk.Add(24 * time.Hour)
	if n, err := a.PruneExpired(ctx); err != nil || n != 7 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if _, err := a.Get(ctx, short[0].Record.Serial); KindOf(err) != KindNotFound {
		t.Fatal("expired certificate not pruned")
	}
	if _, err := a.Get(ctx, long[1].Record.Serial); err != nil {
		t.Fatal("unexpired certificate pruned")
	}
}
