// Package jwt is the jwt and oidc auth method types: a signed JWT (a
// Kubernetes service-account token, a CI pipeline's OIDC token) or an
// OIDC browser login is verified against keys from OIDC discovery, a JWKS
// URL or static PEM keys, checked against a role's bounds (issuer,
// audiences, subject, claims) and turned into an identity with metadata
// from the role's claim_mappings. Keys and settings follow Vault's jwt
// auth method, so configurations carry over.
package jwt

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/internal/errs"
)

// Kinds of this package's types.
const (
	KindJWT  = "jwt"
	KindOIDC = "oidc"
)

// MaxTokenBytes bounds a presented JWT before any parsing: real
// service-account and CI tokens are 1–3 KiB.
const MaxTokenBytes = 16 << 10

// defaultLeeway is the clock skew allowed on exp and nbf (Vault's
// clock_skew_leeway default).
const defaultLeeway = 60 * time.Second

// minJWKSRefresh is the least time between two JWKS fetches caused by
// unknown key ids.
const minJWKSRefresh = 10 * time.Second

// Type is the jwt or oidc type.
type Type struct {
	kind string
	log  *slog.Logger
}

// NewType returns the type of kind (KindJWT or KindOIDC).
func NewType(kind string, log *slog.Logger) *Type { return &Type{kind: kind, log: log} }

// Name implements authmethod.Type.
func (t *Type) Name() string { return t.kind }

func invalidf(f string, a ...any) error { return errs.Errorf(errs.InvalidArgument, f, a...) }
func deniedf(f string, a ...any) error  { return errs.Errorf(errs.PermissionDenied, f, a...) }

var configKeys = []string{"oidc_discovery_url", "oidc_discovery_ca_pem", "jwks_url", "jwks_ca_pem", "jwt_validation_pubkeys",
	"bound_issuer", "jwt_supported_algs", "default_role", "oidc_client_id", "oidc_client_secret"}

// CheckConfig implements authmethod.Type.
func (t *Type) CheckConfig(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range cfg {
		if !slices.Contains(configKeys, k) {
			return nil, invalidf("%s config key %q is unknown (known: %s)", t.kind, k, strings.Join(configKeys, ", "))
		}
		if v = strings.TrimSpace(v); v != "" {
			out[k] = v
		}
	}
	sources := 0
	for _, k := range []string{"oidc_discovery_url", "jwks_url", "jwt_validation_pubkeys"} {
		if out[k] != "" {
			sources++
		}
	}
	if sources != 1 {
		return nil, invalidf("set exactly one of oidc_discovery_url, jwks_url or jwt_validation_pubkeys (got %d)", sources)
	}
	for _, k := range []string{"oidc_discovery_url", "jwks_url"} {
		if v := out[k]; v != "" {
			u, err := url.Parse(v)
			if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
				return nil, invalidf("%s %q: want an https:// URL", k, v)
			}
			if u.Scheme == "http" && !isLoopback(u.Hostname()) {
				return nil, invalidf("%s %q: keys must be fetched over https (http only on loopback)", k, v)
			}
		}
	}
	for _, k := range []string{"jwks_ca_pem", "oidc_discovery_ca_pem"} {
		if v := out[k]; v != "" {
			if _, err := httpClient(v); err != nil {
				return nil, invalidf("%s: %v", k, err)
			}
		}
	}
	if v := out["jwt_validation_pubkeys"]; v != "" {
		if _, err := parsePublicKeys(v); err != nil {
			return nil, invalidf("jwt_validation_pubkeys: %v", err)
		}
	}
	if t.kind == KindOIDC {
		if out["oidc_discovery_url"] == "" || out["oidc_client_id"] == "" {
			return nil, invalidf("oidc needs oidc_discovery_url and oidc_client_id (and oidc_client_secret for a confidential client)")
		}
	}
	if algs := out["jwt_supported_algs"]; algs != "" {
		for _, a := range authmethod.SplitList(algs) {
			if !slices.Contains(algNames(), a) {
				return nil, invalidf("jwt_supported_algs: %q is not accepted (public-key algorithms only: %s)", a, strings.Join(algNames(), ", "))
			}
		}
	}
	if t.kind == KindOIDC || out["oidc_discovery_url"] != "" {
		// Discover now, so a wrong URL or CA is reported at configure time.
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if _, err := discover(dctx, out); err != nil {
			return nil, invalidf("oidc_discovery_url: %v", err)
		}
	}
	return out, nil
}

func isLoopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

func discover(ctx context.Context, cfg map[string]string) (*oidc.Provider, error) {
	client, err := httpClient(cfg["oidc_discovery_ca_pem"])
	if err != nil {
		return nil, err
	}
	return oidc.NewProvider(oidc.ClientContext(ctx, client), cfg["oidc_discovery_url"])
}

// parsePublicKeys reads PEM public keys (PKIX or certificates).
func parsePublicKeys(s string) ([]crypto.PublicKey, error) {
	var out []crypto.PublicKey
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			out = append(out, k)
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, err
			}
			out = append(out, c.PublicKey)
		default:
			return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY or CERTIFICATE", b.Type)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return out, nil
}

var roleKeys = []string{"role_type", "bound_audiences", "bound_subject", "bound_claims", "bound_claims_type", "user_claim",
	"claim_mappings", "groups_claim", "clock_skew_leeway", "expiration_leeway", "not_before_leeway",
	"allowed_redirect_uris", "oidc_scopes"}

// CheckRole implements authmethod.Type. A role with no bound audiences,
// subject or claims would accept any token the issuer ever signed, for
// anyone: it is refused.
func (t *Type) CheckRole(cfg, fields map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range fields {
		if !slices.Contains(roleKeys, k) {
			return nil, invalidf("%s role key %q is unknown (known: %s, token_policies, token_ttl, token_max_ttl)", t.kind, k, strings.Join(roleKeys, ", "))
		}
		if v = strings.TrimSpace(v); v != "" {
			out[k] = v
		}
	}
	if _, err := parseBoundClaims(out["bound_claims"]); err != nil {
		return nil, invalidf("bound_claims: %v", err)
	}
	switch out["bound_claims_type"] {
	case "", "string", "glob":
	default:
		return nil, invalidf("bound_claims_type %q: want string or glob", out["bound_claims_type"])
	}
	if _, err := parseClaimMappings(out["claim_mappings"]); err != nil {
		return nil, invalidf("claim_mappings: %v", err)
	}
	for _, k := range []string{"clock_skew_leeway", "expiration_leeway", "not_before_leeway"} {
		if v := out[k]; v != "" {
			d, err := authmethod.ParseDuration(v)
			if err != nil || d < 0 || d > time.Hour {
				return nil, invalidf("%s %q: want a duration from 0 to 1h", k, v)
			}
		}
	}
	rt := out["role_type"]
	if rt == "" {
		rt = t.kind
		out["role_type"] = rt
	}
	if rt != t.kind {
		return nil, invalidf("role_type %q: this mount is %s", rt, t.kind)
	}
	if rt == KindOIDC {
		if out["allowed_redirect_uris"] == "" {
			return nil, invalidf("an oidc role needs allowed_redirect_uris (e.g. http://localhost:8250/oidc/callback)")
		}
		if out["user_claim"] == "" {
			out["user_claim"] = "sub"
		}
		// A browser login is bound by the client id (the audience) and
		// the provider: it may name no other bound.
		return out, nil
	}
	if out["bound_audiences"] == "" && out["bound_subject"] == "" && out["bound_claims"] == "" {
		return nil, invalidf("a jwt role needs at least one of bound_audiences, bound_subject or bound_claims: a role with no bounds would accept every token the issuer signs")
	}
	if out["user_claim"] == "" {
		out["user_claim"] = "sub"
	}
	return out, nil
}

// New implements authmethod.Type.
func (t *Type) New(ctx context.Context, mount string, cfg map[string]string) (authmethod.Method, error) {
	m := &Method{kind: t.kind, mount: mount, cfg: cfg, log: t.log, issuer: cfg["bound_issuer"], pending: newPendingStore()}
	algs := algNames()
	if a := cfg["jwt_supported_algs"]; a != "" {
		algs = authmethod.SplitList(a)
	}
	switch {
	case cfg["jwt_validation_pubkeys"] != "":
		keys, err := parsePublicKeys(cfg["jwt_validation_pubkeys"])
		if err != nil {
			return nil, invalidf("jwt_validation_pubkeys: %v", err)
		}
		m.keys = staticKeys{publicKeys(keys)}
	case cfg["jwks_url"] != "":
		client, err := httpClient(cfg["jwks_ca_pem"])
		if err != nil {
			return nil, invalidf("jwks_ca_pem: %v", err)
		}
		m.keys = newRemoteKeys(cfg["jwks_url"], client, minJWKSRefresh)
	default:
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		p, err := discover(dctx, cfg)
		if err != nil {
			return nil, errs.Wrap(errs.Unavailable, "oidc discovery", err)
		}
		var claims struct {
			JWKS string `json:"jwks_uri"`
		}
		if err := p.Claims(&claims); err != nil || claims.JWKS == "" {
			return nil, errs.New(errs.Unavailable, "oidc discovery: the provider names no jwks_uri")
		}
		client, err := httpClient(cfg["oidc_discovery_ca_pem"])
		if err != nil {
			return nil, invalidf("oidc_discovery_ca_pem: %v", err)
		}
		m.keys, m.provider, m.client = newRemoteKeys(claims.JWKS, client, minJWKSRefresh), p, client
		if m.issuer == "" {
			// Discovery's issuer is the only one its keys speak for.
			var iss struct {
				Issuer string `json:"issuer"`
			}
			_ = p.Claims(&iss)
			m.issuer = iss.Issuer
		}
	}
	m.verifier = oidc.NewVerifier(m.issuer, m.keys, &oidc.Config{SupportedSigningAlgs: algs,
		SkipClientIDCheck: true, SkipExpiryCheck: true, SkipIssuerCheck: m.issuer == ""})
	return m, nil
}

// Method is a configured jwt or oidc mount.
type Method struct {
	kind, mount string
	cfg         map[string]string
	log         *slog.Logger
	issuer      string
	keys        oidc.KeySet
	verifier    *oidc.IDTokenVerifier
	provider    *oidc.Provider
	client      *http.Client
	pending     *pendingStore
	// shared, when set (the Manager's, in sealed storage), holds started
	// browser logins instead of pending, so any node finishes them.
	shared authmethod.PendingStore
}

// UsePending implements authmethod.PendingUser.
func (m *Method) UsePending(p authmethod.PendingStore) { m.shared = p }

// Close implements authmethod.Method.
func (m *Method) Close() error { return nil }

// Login implements authmethod.Method: a JWT for a role, or (oidc) the
// callback of a browser login.
func (m *Method) Login(ctx context.Context, creds authmethod.Credentials, roles authmethod.RoleLoader) (*authmethod.Identity, error) {
	if m.kind == KindOIDC {
		return m.callback(ctx, creds, roles)
	}
	if creds.JWT == "" {
		return nil, invalidf("jwt is required")
	}
	roleName := creds.Role
	if roleName == "" {
		roleName = m.cfg["default_role"]
	}
	if roleName == "" {
		return nil, invalidf("role is required (or set default_role on the mount)")
	}
	role, err := roles(ctx, roleName)
	if err != nil {
		return nil, err
	}
	claims, err := m.verify(ctx, creds.JWT, role)
	if err != nil {
		return nil, err
	}
	return identityFrom(claims, role)
}

// verify checks the token's size, algorithm, signature, issuer, times and
// the role's bounds, and returns its claims.
func (m *Method) verify(ctx context.Context, raw string, role *authmethod.Role) (map[string]any, error) {
	if len(raw) > MaxTokenBytes {
		return nil, invalidf("jwt of %d bytes exceeds the %d-byte limit", len(raw), MaxTokenBytes)
	}
	raw = strings.TrimSpace(raw)
	if err := checkHeader(raw); err != nil {
		return nil, err
	}
	tok, err := m.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, verifyError(err, m.issuer)
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, invalidf("jwt claims: %v", err)
	}
	if err := checkTimes(claims, role, time.Now()); err != nil {
		return nil, err
	}
	if err := checkBounds(claims, role); err != nil {
		return nil, err
	}
	return claims, nil
}

// checkHeader reports an unacceptable algorithm by name, before the
// signature is looked at.
func checkHeader(raw string) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return invalidf("jwt is malformed: want three dot-separated parts (compact JWS)")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return invalidf("jwt header is not base64url: %v", err)
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return invalidf("jwt header is not JSON: %v", err)
	}
	switch {
	case strings.EqualFold(h.Alg, "none"):
		return deniedf("jwt alg %q refused: unsigned tokens are never accepted", h.Alg)
	case strings.HasPrefix(strings.ToUpper(h.Alg), "HS"):
		return deniedf("jwt alg %q refused: only public-key signatures (%s) are accepted", h.Alg, strings.Join(algNames(), ", "))
	case !slices.Contains(algNames(), h.Alg):
		return deniedf("jwt alg %q refused: accepted are %s", h.Alg, strings.Join(algNames(), ", "))
	}
	return nil
}

// verifyError turns a verifier failure into a clear, kinded error.
func verifyError(err error, issuer string) error {
	msg := err.Error()
	switch {
	case errors.Is(err, errUnknownKID):
		return deniedf("jwt signed by an unknown key (kid not in the issuer's key set, even after a refresh)")
	case errors.Is(err, errBadSignature) || strings.Contains(msg, "failed to verify"):
		if strings.Contains(msg, errUnknownKID.Error()) {
			return deniedf("jwt signed by an unknown key (kid not in the issuer's key set, even after a refresh)")
		}
		if strings.Contains(msg, "fetch") {
			return errs.Errorf(errs.Unavailable, "jwt keys unavailable: %v", err)
		}
		return deniedf("jwt signature does not verify with the issuer's keys")
	case strings.Contains(msg, "issued by a different provider"):
		return deniedf("jwt issuer is not the bound issuer %q", issuer)
	case strings.Contains(msg, "malformed"):
		return invalidf("jwt is malformed: %v", err)
	}
	return deniedf("jwt refused: %v", err)
}

func leeway(role *authmethod.Role, key string) time.Duration {
	for _, k := range []string{key, "clock_skew_leeway"} {
		if v := role.Fields[k]; v != "" {
			if d, err := authmethod.ParseDuration(v); err == nil {
				return d
			}
		}
	}
	return defaultLeeway
}

func numericTime(claims map[string]any, name string) (time.Time, bool, error) {
	v, ok := claims[name]
	if !ok {
		return time.Time{}, false, nil
	}
	f, ok := v.(float64)
	if !ok {
		return time.Time{}, false, invalidf("jwt claim %q is not a number", name)
	}
	return time.Unix(int64(f), 0), true, nil
}

// checkTimes requires exp and honours nbf, each with the role's leeway.
func checkTimes(claims map[string]any, role *authmethod.Role, now time.Time) error {
	exp, ok, err := numericTime(claims, "exp")
	if err != nil {
		return err
	}
	if !ok {
		return deniedf("jwt has no exp claim: tokens that never expire are refused")
	}
	if !now.Before(exp.Add(leeway(role, "expiration_leeway"))) {
		return deniedf("jwt expired at %s", exp.UTC().Format(time.RFC3339))
	}
	nbf, ok, err := numericTime(claims, "nbf")
	if err != nil {
		return err
	}
	if ok && now.Add(leeway(role, "not_before_leeway")).Before(nbf) {
		return deniedf("jwt is not valid yet: not before %s", nbf.UTC().Format(time.RFC3339))
	}
	return nil
}

// audiences returns the aud claim as a list.
func audiences(claims map[string]any) []string {
	switch v := claims["aud"].(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, a := range v {
			if s, ok := a.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func checkBounds(claims map[string]any, role *authmethod.Role) error {
	f := role.Fields
	aud := audiences(claims)
	if bound := authmethod.SplitList(f["bound_audiences"]); len(bound) > 0 {
		if !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(bound, a) }) {
			return deniedf("jwt audience %q is not one of the role's bound_audiences", aud)
		}
	} else if len(aud) > 0 && role.Fields["role_type"] != KindOIDC {
		// Vault's rule: a token meant for someone must be accepted only by
		// a role that says it is that someone.
		return deniedf("jwt has an audience (%q) but the role binds none: set bound_audiences", aud)
	}
	if bs := f["bound_subject"]; bs != "" {
		if sub, _ := claims["sub"].(string); sub != bs {
			return deniedf("jwt subject %q is not the role's bound_subject", sub)
		}
	}
	bc, err := parseBoundClaims(f["bound_claims"])
	if err != nil {
		return errs.Wrap(errs.Internal, "stored bound_claims", err)
	}
	glob := f["bound_claims_type"] == "glob"
	for claim, want := range bc {
		got, ok := lookupClaim(claims, claim)
		if !ok {
			return deniedf("jwt has no claim %q, which the role binds", claim)
		}
		if !claimMatches(got, want, glob) {
			return deniedf("jwt claim %q does not match the role's bound_claims", claim)
		}
	}
	return nil
}

// parseBoundClaims reads bound_claims: a JSON object of claim (or
// /nested/path) to a string or list of strings, any of which may match.
func parseBoundClaims(s string) (map[string][]string, error) {
	out := map[string][]string{}
	if s == "" {
		return out, nil
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("want a JSON object of claim to value(s): %v", err)
	}
	for k, v := range raw {
		switch x := v.(type) {
		case string:
			out[k] = []string{x}
		case bool, float64:
			out[k] = []string{fmt.Sprint(x)}
		case []any:
			for _, e := range x {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("claim %q: list values must be strings", k)
				}
				out[k] = append(out[k], s)
			}
		default:
			return nil, fmt.Errorf("claim %q: want a string or a list of strings", k)
		}
		if len(out[k]) == 0 {
			return nil, fmt.Errorf("claim %q: empty list would match nothing", k)
		}
	}
	return out, nil
}

// lookupClaim finds a claim by name, or by a JSON-pointer-style path
// "/kubernetes.io/namespace" for nested claims.
func lookupClaim(claims map[string]any, name string) (any, bool) {
	if !strings.HasPrefix(name, "/") {
		v, ok := claims[name]
		return v, ok
	}
	var cur any = claims
	for seg := range strings.SplitSeq(strings.TrimPrefix(name, "/"), "/") {
		seg = strings.NewReplacer("~1", "/", "~0", "~").Replace(seg)
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[seg]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// claimMatches: a scalar claim matches one of want; a list claim matches
// when any element does.
func claimMatches(got any, want []string, glob bool) bool {
	match := func(s string) bool {
		for _, w := range want {
			if glob {
				if ok, err := path.Match(w, s); err == nil && ok {
					return true
				}
			} else if s == w {
				return true
			}
		}
		return false
	}
	switch v := got.(type) {
	case string:
		return match(v)
	case bool, float64:
		return match(fmt.Sprint(v))
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok && match(s) {
				return true
			}
		}
	}
	return false
}

// parseClaimMappings reads claim_mappings: a JSON object (Vault's form)
// of claim (or /nested/path) to metadata key, or "claim=key,...".
func parseClaimMappings(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			return nil, fmt.Errorf("want a JSON object of claim to metadata key: %v", err)
		}
	} else {
		for _, p := range authmethod.SplitList(s) {
			c, k, ok := strings.Cut(p, "=")
			if !ok {
				return nil, fmt.Errorf("%q: want claim=key", p)
			}
			out[strings.TrimSpace(c)] = strings.TrimSpace(k)
		}
	}
	seen := map[string]bool{}
	for c, k := range out {
		if c == "" || !validMetaKey(k) {
			return nil, fmt.Errorf("%q=%q: metadata keys use letters, digits, '-' and '_'", c, k)
		}
		if seen[k] {
			return nil, fmt.Errorf("metadata key %q is mapped twice", k)
		}
		seen[k] = true
	}
	return out, nil
}

func validMetaKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// maxMetaValue bounds a metadata value taken from a claim.
const maxMetaValue = 512

// identityFrom builds the identity: user_claim names it, claim_mappings
// give its metadata, groups_claim its groups.
func identityFrom(claims map[string]any, role *authmethod.Role) (*authmethod.Identity, error) {
	uc := role.Fields["user_claim"]
	if uc == "" {
		uc = "sub"
	}
	v, ok := lookupClaim(claims, uc)
	name, isStr := v.(string)
	if !ok || !isStr || name == "" {
		return nil, deniedf("jwt has no string claim %q (the role's user_claim)", uc)
	}
	id := &authmethod.Identity{Name: name, Role: role, Metadata: map[string]string{}}
	cm, err := parseClaimMappings(role.Fields["claim_mappings"])
	if err != nil {
		return nil, errs.Wrap(errs.Internal, "stored claim_mappings", err)
	}
	for claim, key := range cm {
		v, ok := lookupClaim(claims, claim)
		if !ok {
			continue
		}
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case bool, float64:
			s = fmt.Sprint(x)
		default:
			continue // only scalars map to metadata
		}
		if len(s) <= maxMetaValue {
			id.Metadata[key] = s
		}
	}
	if gc := role.Fields["groups_claim"]; gc != "" {
		if v, ok := lookupClaim(claims, gc); ok {
			switch x := v.(type) {
			case string:
				id.Groups = []string{x}
			case []any:
				for _, e := range x {
					if s, ok := e.(string); ok {
						id.Groups = append(id.Groups, s)
					}
				}
			}
		}
	}
	return id, nil
}
