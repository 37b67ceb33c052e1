package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// tokenCreds is `sigil creds --format json` for a tokens mount.
type tokenCreds struct {
	LeaseID string `json:"lease_id"`
	Data    struct {
		Token     string `json:"token"`
		TokenType string `json:"token_type"`
	} `json:"data"`
}

func mintToken(t *testing.T, d *devServer, path string) tokenCreds {
	t.Helper()
	c := cliJSON[tokenCreds](t, d, "creds", path, "--format", "json")
	if c.Data.Token == "" || c.LeaseID == "" {
		t.Fatalf("creds %s: token or lease_id missing (lease %q)", path, c.LeaseID)
	}
	return c
}

type introspection struct {
	Active bool   `json:"active"`
	Scope  string `json:"scope"`
	Sub    string `json:"sub"`
	Exp    int64  `json:"exp"`
}

// introspect passes the token on stdin, as an operator would, so it never
// appears in a process listing.
func introspect(t *testing.T, d *devServer, token string) introspection {
	t.Helper()
	out, stderr, code := d.cliStdin(t, token, "token", "introspect", "-", "--format", "json")
	if code != 0 {
		t.Fatalf("token introspect: %s", stderr)
	}
	var r introspection
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("introspect output %q: %v", out, err)
	}
	return r
}

func TestTokensEngine(t *testing.T) {
	d := startDev(t, t.TempDir())
	for _, args := range [][]string{
		{"engine", "enable", "tokens", "--mount", "svc-tokens"},
		{"role", "write", "svc-tokens/opaque", "scopes=read write", "ttl=1h"},
		{"role", "write", "svc-tokens/short", "ttl=2s"},
		{"role", "write", "svc-tokens/jwt", "format=jwt", "ttl=10m", "audience=payments", "scopes=pay"},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}

	t.Run("opaque", func(t *testing.T) {
		c := mintToken(t, d, "svc-tokens/opaque")
		if !strings.HasPrefix(c.Data.Token, "sgl_") || c.Data.TokenType != "opaque" {
			t.Fatalf("token %+v", c.Data)
		}
		if r := introspect(t, d, c.Data.Token); !r.Active || r.Scope != "read write" {
			t.Fatalf("fresh token: %+v", r)
		}
		if _, stderr, code := d.cli(t, "lease", "revoke", c.LeaseID); code != 0 {
			t.Fatal(stderr)
		}
		if r := introspect(t, d, c.Data.Token); r.Active {
			t.Fatal("token active right after its lease was revoked")
		}
		if r := introspect(t, d, "sgl_not.a.token"); r.Active {
			t.Fatal("garbage is active")
		}
	})

	t.Run("expiry", func(t *testing.T) {
		c := mintToken(t, d, "svc-tokens/short")
		if r := introspect(t, d, c.Data.Token); !r.Active {
			t.Fatal("fresh 2s token inactive")
		}
		time.Sleep(2500 * time.Millisecond)
		if r := introspect(t, d, c.Data.Token); r.Active {
			t.Fatal("token active after its TTL")
		}
	})

	t.Run("jwt", func(t *testing.T) {
		c := mintToken(t, d, "svc-tokens/jwt")
		keys := fetchJWKS(t, d, "svc-tokens")
		if len(keys.Keys) != 1 {
			t.Fatalf("JWKS has %d keys", len(keys.Keys))
		}
		// Verified with go-jose against the JWKS fetched over HTTPS, not
		// with Sigil's code.
		claims := verifyJWT(t, c.Data.Token, keys)
		if claims.ID != c.LeaseID || !claims.Audience.Contains("payments") {
			t.Fatalf("claims %+v", claims)
		}
		if r := introspect(t, d, c.Data.Token); !r.Active || r.Scope != "pay" {
			t.Fatalf("fresh JWT: %+v", r)
		}

		// Rotation adds a kid; the old one stays, so old tokens verify.
		if _, stderr, code := d.cli(t, "engine", "rotate-root", "svc-tokens"); code != 0 {
			t.Fatal(stderr)
		}
		keys = fetchJWKS(t, d, "svc-tokens")
		if len(keys.Keys) != 2 {
			t.Fatalf("after rotation JWKS has %d keys, want 2", len(keys.Keys))
		}
		verifyJWT(t, c.Data.Token, keys)
		c2 := mintToken(t, d, "svc-tokens/jwt")
		verifyJWT(t, c2.Data.Token, keys)

		if _, stderr, code := d.cli(t, "lease", "revoke", c.LeaseID); code != 0 {
			t.Fatal(stderr)
		}
		if r := introspect(t, d, c.Data.Token); r.Active {
			t.Fatal("JWT active after its lease was revoked")
		}
		if r := introspect(t, d, c2.Data.Token); !r.Active {
			t.Fatal("revoking one JWT's lease deactivated another")
		}
	})

	t.Run("jwks of unknown mount", func(t *testing.T) {
		resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + "/jwks/nope.json")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

func fetchJWKS(t *testing.T, d *devServer, mount string) jose.JSONWebKeySet {
	t.Helper()
	resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + "/jwks/" + mount + ".json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("JWKS: %d %s", resp.StatusCode, b)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatalf("JWKS %s: %v", b, err)
	}
	return set
}

func verifyJWT(t *testing.T, token string, keys jose.JSONWebKeySet) jwt.Claims {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	found := keys.Key(tok.Headers[0].KeyID)
	if len(found) != 1 {
		t.Fatalf("kid %q not in the JWKS", tok.Headers[0].KeyID)
	}
	var c jwt.Claims
	if err := tok.Claims(found[0].Key, &c); err != nil {
		t.Fatalf("JWT does not verify against the JWKS: %v", err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, time.Minute); err != nil {
		t.Fatal(err)
	}
	return c
}
