package jwt

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/internal/errs"
)

func TestBoundClaims(t *testing.T) {
	claims := map[string]any{
		"repository": "acme/app", "ref": "refs/heads/main", "groups": []any{"dev", "ops"}, "admin": true,
		"kubernetes.io": map[string]any{"namespace": "team-a", "serviceaccount": map[string]any{"name": "app"}},
		"a/b":           "slash",
	}
	for _, tt := range []struct {
		name, bound, typ string
		ok               bool
	}{
		{"exact", `{"repository":"acme/app"}`, "", true},
		{"exact mismatch", `{"repository":"acme/other"}`, "", false},
		{"exact does not glob", `{"ref":"refs/heads/*"}`, "", false},
		{"glob", `{"ref":"refs/heads/*"}`, "glob", true},
		{"glob mismatch", `{"ref":"refs/tags/*"}`, "glob", false},
		{"glob does not cross slash", `{"repository":"*"}`, "glob", false},
		{"any of a list", `{"repository":["x/y","acme/app"]}`, "", true},
		{"list claim", `{"groups":"ops"}`, "", true},
		{"list claim mismatch", `{"groups":"root"}`, "", false},
		{"bool claim", `{"admin":true}`, "", true},
		{"nested", `{"/kubernetes.io/namespace":"team-a"}`, "", true},
		{"deeper", `{"/kubernetes.io/serviceaccount/name":"app"}`, "", true},
		{"nested mismatch", `{"/kubernetes.io/namespace":"team-b"}`, "", false},
		{"missing claim", `{"environment":"production"}`, "", false},
		{"escaped slash", `{"/a~1b":"slash"}`, "", true},
		{"all must match", `{"repository":"acme/app","ref":"refs/heads/dev"}`, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			role := &authmethod.Role{Fields: map[string]string{"bound_claims": tt.bound, "bound_claims_type": tt.typ}}
			err := checkBounds(claims, role)
			if (err == nil) != tt.ok {
				t.Fatalf("checkBounds(%s) = %v, want ok=%v", tt.bound, err, tt.ok)
			}
			if err != nil && errs.KindOf(err) != errs.PermissionDenied {
				t.Fatalf("kind %v, want PermissionDenied", errs.KindOf(err))
			}
		})
	}
}

func TestCheckHeader(t *testing.T) {
	tok := func(header string) string {
		return base64.RawURLEncoding.EncodeToString([]byte(header)) + ".e30.sig"
	}
	for _, tt := range []struct {
		name, raw, want string
	}{
		{"none", tok(`{"alg":"none"}`), `alg "none" refused`},
		{"None", tok(`{"alg":"None"}`), `alg "None" refused`},
		{"HS256", tok(`{"alg":"HS256"}`), "only public-key signatures"},
		{"HS512", tok(`{"alg":"HS512"}`), "only public-key signatures"},
		{"unknown", tok(`{"alg":"XYZ"}`), "refused"},
		{"two parts", "a.b", "three dot-separated parts"},
		{"bad base64", "!!.e30.x", "not base64url"},
		{"bad json", tok(`{`), "not JSON"},
		{"RS256 ok", tok(`{"alg":"RS256"}`), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := checkHeader(tt.raw)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("checkHeader = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestCheckTimes(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	role := &authmethod.Role{Fields: map[string]string{"clock_skew_leeway": "30s"}}
	for _, tt := range []struct {
		name   string
		claims map[string]any
		want   string
	}{
		{"valid", map[string]any{"exp": float64(now.Unix() + 60)}, ""},
		{"no exp", map[string]any{}, "no exp claim"},
		{"expired within leeway", map[string]any{"exp": float64(now.Unix() - 20)}, ""},
		{"expired", map[string]any{"exp": float64(now.Unix() - 31)}, "expired at"},
		{"nbf within leeway", map[string]any{"exp": float64(now.Unix() + 60), "nbf": float64(now.Unix() + 20)}, ""},
		{"not yet valid", map[string]any{"exp": float64(now.Unix() + 600), "nbf": float64(now.Unix() + 60)}, "not valid yet"},
		{"exp not a number", map[string]any{"exp": "tomorrow"}, "not a number"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := checkTimes(tt.claims, role, now)
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("checkTimes = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestIdentityMetadata: claim_mappings take scalar claims (nested too),
// skip non-scalars and oversized values.
func TestIdentityMetadata(t *testing.T) {
	role := &authmethod.Role{Fields: map[string]string{"user_claim": "sub",
		"claim_mappings": `{"/kubernetes.io/namespace":"namespace","groups":"groups","big":"big","n":"n"}`}}
	id, err := identityFrom(map[string]any{"sub": "s", "kubernetes.io": map[string]any{"namespace": "team-a"},
		"groups": []any{"a"}, "big": strings.Repeat("x", maxMetaValue+1), "n": float64(3)}, role)
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "s" || id.Metadata["namespace"] != "team-a" || id.Metadata["n"] != "3" || len(id.Metadata) != 2 {
		t.Fatalf("identity %+v", id)
	}
	if _, err := identityFrom(map[string]any{"sub": 5.0}, role); errs.KindOf(err) != errs.PermissionDenied {
		t.Fatalf("non-string user claim: %v", err)
	}
}
