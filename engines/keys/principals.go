package keys

import (
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-ca/sigil/engines"
)

// principalRule binds the callers matching pattern to SSH principals the
// operator chose.
type principalRule struct {
	pattern    string
	principals []string
}

// maxPrincipalMap bounds the JSON of a principal_map.
const maxPrincipalMap = 64 << 10

// parsePrincipalMap reads principal_map: a JSON object from a caller
// pattern to the principals it gets, e.g.
//
//	{"spiffe://example.org/ns/ops/alice": ["alice"],
//	 "spiffe://example.org/ns/ops/*": ["ops"], "token:3f2a…": ["deploy"]}
//
// A pattern is a SPIFFE ID, in which "*" matches any run of characters
// within one path segment, or an exact "token:ID". The trust domain is
// literal.
func parsePrincipalMap(v string) ([]principalRule, error) {
	if v == "" {
		return nil, nil
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", engines.ErrInvalidConfig, KeyPrincipalMap, fmt.Sprintf(format, args...))
	}
	if len(v) > maxPrincipalMap {
		return nil, bad("longer than %d bytes", maxPrincipalMap)
	}
	var m map[string][]string
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return nil, bad(`must be a JSON object of caller pattern to principal list, e.g. {"spiffe://example.org/ns/ops/alice":["alice"]}: %v`, err)
	}
	out := make([]principalRule, 0, len(m))
	for pat, ps := range m {
		if err := checkCallerPattern(pat); err != nil {
			return nil, bad("%q: %v", pat, err)
		}
		if len(ps) == 0 {
			return nil, bad("%q maps to no principal", pat)
		}
		rule := principalRule{pattern: pat}
		for _, p := range ps {
			if err := checkPrincipal(p); err != nil {
				return nil, bad("%q: principal %q: %v", pat, p, err)
			}
			if !slices.Contains(rule.principals, p) {
				rule.principals = append(rule.principals, p)
			}
		}
		out = append(out, rule)
	}
	// Deterministic order for the stored form and the certificates.
	slices.SortFunc(out, func(a, b principalRule) int { return strings.Compare(a.pattern, b.pattern) })
	return out, nil
}

// checkCallerPattern validates a principal_map key.
func checkCallerPattern(pat string) error {
	if id, ok := strings.CutPrefix(pat, "token:"); ok {
		if id == "" || strings.ContainsFunc(id, func(r rune) bool { return !isIDChar(r) }) {
			return fmt.Errorf("a token pattern is token:ID with the token's exact ID")
		}
		return nil
	}
	if !strings.HasPrefix(pat, "spiffe://") {
		return fmt.Errorf("use a SPIFFE ID (spiffe://TRUST-DOMAIN/PATH, '*' within path segments) or token:ID")
	}
	// '*' is the only wildcard; anything else path.Match would read as one
	// is refused so a pattern means what it says.
	if strings.ContainsAny(pat, `?[]\`) {
		return fmt.Errorf(`only "*" is a wildcard`)
	}
	if td, _, _ := strings.Cut(strings.TrimPrefix(pat, "spiffe://"), "/"); strings.Contains(td, "*") {
		return fmt.Errorf("the trust domain must be literal")
	}
	id, err := spiffeid.FromString(strings.ReplaceAll(pat, "*", "x"))
	if err != nil {
		return err
	}
	if id.Path() == "" {
		return fmt.Errorf("name a path: a whole trust domain is not one caller")
	}
	return nil
}

func isIDChar(r rune) bool {
	return r == '-' || r == '_' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// checkPrincipal validates an operator-chosen principal.
func checkPrincipal(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty")
	case p == "*":
		return fmt.Errorf(`"*" would allow any principal; put it in allowed_principals if that is meant`)
	case strings.Contains(p, "{{"):
		return fmt.Errorf("placeholders are not expanded here")
	case strings.Contains(p, ","):
		return fmt.Errorf("contains a comma")
	case strings.ContainsFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("contains white space or a control character")
	case len(p) > 256:
		return fmt.Errorf("longer than 256 bytes")
	}
	return nil
}

// matchCaller reports whether identity matches pattern: the same number of
// '/'-separated segments, each matched with '*' as the only wildcard.
func matchCaller(pattern, identity string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == identity
	}
	ps, is := strings.Split(pattern, "/"), strings.Split(identity, "/")
	if len(ps) != len(is) {
		return false
	}
	for i := range ps {
		if ok, err := path.Match(ps[i], is[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

// mappedPrincipals returns the principals principal_map binds to identity,
// in the map's order, without duplicates.
func mappedPrincipals(rules []principalRule, identity string) []string {
	var out []string
	for _, r := range rules {
		if !matchCaller(r.pattern, identity) {
			continue
		}
		for _, p := range r.principals {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// formatPrincipalMap is the stored (canonical JSON) form.
func formatPrincipalMap(rules []principalRule) string {
	m := make(map[string][]string, len(rules))
	for _, r := range rules {
		m[r.pattern] = r.principals
	}
	b, _ := json.Marshal(m) // a map of strings always marshals
	return string(b)
}
