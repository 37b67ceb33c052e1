package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "empty keeps defaults", yaml: "", check: func(t *testing.T, c Config) {
			if c.HTTPSAddr != "127.0.0.1:8443" {
				t.Errorf("HTTPSAddr = %q", c.HTTPSAddr)
			}
		}},
		{name: "values", yaml: "dev: true\ndata_dir: /x\nhttps_addr: 127.0.0.1:1\nshutdown_timeout: 3s\nhsm:\n  uri: pkcs11:token=a\n", check: func(t *testing.T, c Config) {
			if !c.Dev || c.DataDir != "/x" || c.HTTPSAddr != "127.0.0.1:1" || time.Duration(c.ShutdownTimeout) != 3*time.Second || c.HSM.URI != "pkcs11:token=a" {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "acme section", yaml: "acme:\n  validation: {allow: [127.0.0.1/32], deny: [10.0.0.0/8]}\n  rate_limits: {new_nonce: {per_second: 2, burst: 5}}\n  provisioners:\n    - {name: open, require_eab: false, ip_ranges: [10.1.0.0/16]}\n    - {name: closed}\n", check: func(t *testing.T, c Config) {
			a := c.ACME
			if len(a.Validation.Allow) != 1 || len(a.Validation.Deny) != 1 || a.RateLimits.NewNonce.Burst != 5 || len(a.Provisioners) != 2 {
				t.Fatalf("got %+v", a)
			}
			if !a.Provisioners[0].Open() || a.Provisioners[1].Open() {
				t.Errorf("open: %v %v (require_eab defaults to true)", a.Provisioners[0].Open(), a.Provisioners[1].Open())
			}
		}},
		{name: "unknown top-level key", yaml: "dev: true\nlisten: x\n", wantErr: `line 2: unknown key "listen"`},
		{name: "unknown nested key", yaml: "hsm:\n  url: x\n", wantErr: `unknown key "url"`},
		{name: "bad duration", yaml: "shutdown_timeout: soon\n", wantErr: "line 1"},
		{name: "wrong type", yaml: "dev: [1]\n", wantErr: "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), Default())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *Config)
		wantErr string
	}{
		{name: "defaults", mutate: func(*Config) {}},
		{name: "bad addr", mutate: func(c *Config) { c.GRPCAddr = "nope" }, wantErr: "grpc_addr"},
		{name: "bad storage", mutate: func(c *Config) { c.Storage = "mysql://u:pw@h/db" }, wantErr: "storage"},
		{name: "storage error redacts password", mutate: func(c *Config) { c.Storage = "mysql://u:hunter2@h/db" }, wantErr: "xxxxx"},
		{name: "postgres ok", mutate: func(c *Config) { c.Storage = "postgres://u:p@h/db" }},
		{name: "storage_sync full", mutate: func(c *Config) { c.StorageSync = "full" }},
		{name: "storage_sync normal", mutate: func(c *Config) { c.StorageSync = "normal" }},
		{name: "storage_sync unknown", mutate: func(c *Config) { c.StorageSync = "off" }, wantErr: `storage_sync "off": use "normal" or "full"`},
		{name: "storage_sync on postgres", mutate: func(c *Config) { c.Storage = "postgres://u:p@h/db"; c.StorageSync = "full" }, wantErr: "synchronous_commit"},
		{name: "bad hsm", mutate: func(c *Config) { c.HSM.URI = "/usr/lib/x.so" }, wantErr: "hsm.uri"},
		{name: "bad public url", mutate: func(c *Config) { c.PublicURL = "ftp://x" }, wantErr: "public_url"},
		{name: "bad log level", mutate: func(c *Config) { c.Log.Level = "loud" }, wantErr: "log.level"},
		{name: "pprof not loopback", mutate: func(c *Config) { c.PprofAddr = "0.0.0.0:6060" }, wantErr: "pprof_addr"},
		{name: "pprof loopback", mutate: func(c *Config) { c.PprofAddr = "127.0.0.1:6060" }},
		{name: "tls half set", mutate: func(c *Config) { c.TLS.CertFile = "x.pem" }, wantErr: "tls.cert_file"},
		{name: "acme bad allow", mutate: func(c *Config) { c.ACME.Validation.Allow = []string{"10.0.0.0/33"} }, wantErr: "acme.validation.allow"},
		{name: "acme bad ip range", mutate: func(c *Config) { c.ACME.Provisioners = []ACMEProvisioner{{Name: "a", IPRanges: []string{"10.0.0.1"}}} }, wantErr: "ip_ranges"},
		{name: "acme unnamed provisioner", mutate: func(c *Config) { c.ACME.Provisioners = []ACMEProvisioner{{}} }, wantErr: "name must be set"},
		{name: "acme negative burst", mutate: func(c *Config) { c.ACME.RateLimits.NewOrder.Burst = -1 }, wantErr: "new_order.burst"},
		{name: "failed logins negative rate", mutate: func(c *Config) { c.FailedLogins.PerSecond = -1 }, wantErr: "failed_logins"},
		{name: "failed logins negative burst", mutate: func(c *Config) { c.FailedLogins.Burst = -1 }, wantErr: "failed_logins"},
		{name: "failed logins set", mutate: func(c *Config) { c.FailedLogins = RateLimit{PerSecond: 0.01, Burst: 3} }},
		{name: "jwt key rotation too short", mutate: func(c *Config) { c.SVID.JWTKeyRotation = Duration(time.Minute) }, wantErr: "svid.jwt_key_rotation"},
		{name: "jwt key lead over half", mutate: func(c *Config) {
			c.SVID = SVID{JWTKeyRotation: Duration(2 * time.Hour), JWTKeyLead: Duration(90 * time.Minute)}
		}, wantErr: "svid.jwt_key_lead"},
		{name: "jwt key lead negative", mutate: func(c *Config) { c.SVID.JWTKeyLead = -1 }, wantErr: "svid.jwt_key_lead"},
		{name: "jwt key schedule set", mutate: func(c *Config) {
			c.SVID = SVID{JWTKeyRotation: Duration(24 * time.Hour), JWTKeyLead: Duration(30 * time.Minute)}
		}},
		{name: "token max ttl negative", mutate: func(c *Config) { c.Tokens.MaxTTL = -1 }, wantErr: "tokens.max_ttl"},
		{name: "token max ttl sub-second", mutate: func(c *Config) { c.Tokens.MaxTTL = Duration(time.Millisecond) }, wantErr: "tokens.max_ttl"},
		{name: "token max ttl set", mutate: func(c *Config) { c.Tokens.MaxTTL = Duration(time.Hour) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.PublicURL == "" {
					t.Error("PublicURL not derived")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks password: %v", err)
			}
		})
	}
}

// TestTokenMaxTTL: tokens.max_ttl parses from YAML and defaults to 768h.
func TestTokenMaxTTL(t *testing.T) {
	tests := []struct {
		yaml string
		want time.Duration
	}{
		{"", DefaultTokenMaxTTL},
		{"tokens:\n  max_ttl: 24h\n", 24 * time.Hour},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(tt.yaml), Default())
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if got := time.Duration(c.Tokens.MaxTTL); got != tt.want {
			t.Errorf("%q: max_ttl %v, want %v", tt.yaml, got, tt.want)
		}
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("grpc_addr: 127.0.0.1:9\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadFile(p, Default())
	if err == nil || !strings.Contains(err.Error(), `"bogus"`) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v", err)
	}
}

// FuzzParse: configuration files are operator input; a bad one must give
// an error, never a panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte("dev: true\nhsm:\n  uri: pkcs11:token=a\n"))
	f.Add([]byte("shutdown_timeout: 3s\n"))
	f.Add([]byte("ca: [1, 2]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, Default())
		if err == nil {
			_ = c.Validate()
		}
	})
}
