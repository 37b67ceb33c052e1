package policy

import (
	"errors"
	"fmt"
	"strings"
)

// IdentityTemplate is the one template a rule path may hold, as a whole
// segment: "kv/data/apps/{{identity}}/*" gives every caller its own
// namespace from one policy.
const IdentityTemplate = "{{identity}}"

// TemplateIdentity returns the value {{identity}} stands for in the rules
// applied to sub, and whether it has one:
//
//   - a caller that authenticated with an X.509-SVID: "spiffe:" followed by
//     the trust domain and each path segment of its SPIFFE ID, joined by
//     ':' (spiffe://example.org/ns/web/sa/app becomes
//     "spiffe:example.org:ns:web:sa:app");
//   - otherwise a token: "token:" followed by the token id.
//
// The value is always exactly one path segment. Its characters are those
// the SPIFFE specification allows in a trust domain or path segment (and
// in token ids): letters, digits, '.', '-' and '_', plus the ':' joints,
// which none of those can contain, so the encoding is injective: two
// identities never share a namespace, and none is a prefix of another's
// segments. A SPIFFE ID or token id with any other character ('/' beyond
// the structure, '*', '{', '%', a '.' or '..' segment, an empty segment, a
// query or fragment) has no template value: templated rules then grant
// (and deny) nothing for that caller, so an identity cannot inject a
// wildcard or a separator to reach another namespace.
func TemplateIdentity(sub Subject) (string, bool) {
	if sub.SPIFFEID != "" {
		v, err := spiffeTemplateValue(sub.SPIFFEID)
		return v, err == nil
	}
	if sub.TokenID != "" && templateSafe(sub.TokenID) {
		return "token:" + sub.TokenID, true
	}
	return "", false
}

func spiffeTemplateValue(id string) (string, error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", errors.New("not a spiffe:// URI")
	}
	segs := strings.Split(rest, "/")
	for _, s := range segs {
		if !templateSafe(s) || s == "." || s == ".." {
			return "", fmt.Errorf("segment %q cannot be templated", s)
		}
	}
	return "spiffe:" + strings.Join(segs, ":"), nil
}

// templateSafe reports whether s is non-empty and only [A-Za-z0-9._-].
func templateSafe(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// MetadataTemplatePrefix starts a metadata template segment:
// "{{identity.metadata.KEY}}" stands for the value an auth method mapped
// to KEY for the caller (a JWT role's claim_mappings, for instance), as a
// whole segment: "secret/data/{{identity.metadata.namespace}}/*".
const MetadataTemplatePrefix = "{{identity.metadata."

// metadataKey returns KEY of a "{{identity.metadata.KEY}}" segment.
func metadataKey(seg string) (string, bool) {
	rest, ok := strings.CutPrefix(seg, MetadataTemplatePrefix)
	if !ok {
		return "", false
	}
	key, ok := strings.CutSuffix(rest, "}}")
	if !ok || !templateKeySafe(key) {
		return "", false
	}
	return key, true
}

// templateKeySafe reports whether a metadata key is [A-Za-z0-9_-]+.
func templateKeySafe(k string) bool {
	return k != "" && templateSafe(k) && !strings.Contains(k, ".")
}

// TemplateMetadata returns the value {{identity.metadata.KEY}} stands for
// in the rules applied to sub, and whether it has one. Like
// TemplateIdentity, the value must be one safe path segment
// ([A-Za-z0-9._-], not "." or ".."); a caller whose value for KEY is
// missing or holds anything else ('/', '*', '{', a space) gets nothing
// from rules that use it, so metadata cannot inject a wildcard or a
// separator to reach another namespace.
func TemplateMetadata(sub Subject, key string) (string, bool) {
	v, ok := sub.Metadata[key]
	if !ok || !templateSafe(v) || v == "." || v == ".." {
		return "", false
	}
	return v, true
}

// checkTemplate validates the templates of a rule path: "{{" and "}}" may
// only appear as a whole "{{identity}}" or "{{identity.metadata.KEY}}"
// segment. It reports whether the path holds one.
func checkTemplate(path string) (bool, error) {
	if !strings.Contains(path, "{") && !strings.Contains(path, "}") {
		return false, nil
	}
	found := false
	for seg := range strings.SplitSeq(path, "/") {
		if seg == IdentityTemplate {
			found = true
			continue
		}
		if _, ok := metadataKey(seg); ok {
			found = true
			continue
		}
		if strings.ContainsAny(seg, "{}") {
			return false, fmt.Errorf("segment %q: the only templates are a whole %s or %sKEY}} segment (KEY: letters, digits, '-', '_')",
				seg, IdentityTemplate, MetadataTemplatePrefix)
		}
	}
	return found, nil
}

// instantiate returns the pattern and its source path with each template
// segment replaced by sub's value for it, and false when sub has no value
// for one of them (the rule then applies to nobody).
func (p pattern) instantiate(sub Subject, path string) (pattern, string, bool) {
	ident, hasIdent := TemplateIdentity(sub)
	value := func(seg string) (string, bool, bool) {
		if seg == IdentityTemplate {
			return ident, hasIdent, true
		}
		if key, ok := metadataKey(seg); ok {
			v, ok := TemplateMetadata(sub, key)
			return v, ok, true
		}
		return "", false, false
	}
	out := pattern{segs: make([]string, len(p.segs)), rest: p.rest}
	for i, s := range p.segs {
		v, ok, tmpl := value(s)
		if tmpl && !ok {
			return pattern{}, "", false
		}
		if tmpl {
			s = v
		}
		out.segs[i] = s
	}
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if v, ok, tmpl := value(s); tmpl && ok {
			segs[i] = v
		}
	}
	return out, strings.Join(segs, "/"), true
}
