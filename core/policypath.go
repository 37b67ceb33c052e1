package core

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
)

// The policy paths requests are authorised on, declared as templates on
// each gRPC method (proto/sigil/v1/authz.proto): literal text and
// placeholders {FIELD} or {FIELD:RULE}, each replaced by a request field
// after RULE (FIELD's own name when omitted) has checked it. A rule
// refuses an invalid component with InvalidArgument, so a crafted name
// can never reach a path it does not spell: none lets through an empty,
// "." or ".." segment, and the one-segment rules no "/".

// componentCheck is one check of a path component. stage orders checks
// across a template's components, as the hand-written paths did: a kv
// path is checked before its mount, and the internal mount is refused
// only once every component is known to be valid.
type componentCheck struct {
	stage int
	check func(string) error
}

// pathRule is what a placeholder's RULE names.
type pathRule struct {
	checks []componentCheck
	// value is the text written into the path; nil: the field itself.
	value func(string) string
}

func invalidComponent(op string, check func(string) error) func(string) error {
	return func(v string) error { return errs.Wrap(errs.InvalidArgument, op, check(v)) }
}

// pathRules are the placeholders' rules, by name.
func pathRules() map[string]pathRule {
	mount := componentCheck{1, invalidComponent("", engines.CheckPath)}
	name := func(check func(string) error) pathRule {
		return pathRule{checks: []componentCheck{{1, check}}}
	}
	return map[string]pathRule{
		// An engine's mount: one or more name segments.
		"mount": name(mount.check),
		// A mount administered under sys/mounts/: not the internal token mount.
		"admin-mount": {checks: []componentCheck{mount, {2, func(m string) error {
			if m == auth.LeaseMount {
				return errs.New(errs.FailedPrecondition, "mount \"auth\" is internal: API tokens are managed with `sigil token`")
			}
			return nil
		}}}},
		"role":        name(invalidComponent("", engines.CheckRoleName)),
		"transit-key": name(invalidComponent("", transit.CheckName)),
		"policy":      name(invalidComponent("", policy.ValidName)),
		"token-id": name(func(id string) error {
			// "." and ".." too: a path segment that is not the id's own.
			if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/ *") {
				return errs.New(errs.InvalidArgument, "id is required: the token id (not the token)")
			}
			return nil
		}),
		// A kv secret path (Vault KV v2's MOUNT/data/PATH and siblings).
		"kv-path": {checks: []componentCheck{{0, invalidComponent("", kv.CheckPath)}}},
		// A kv list prefix: "" or a path and "/", written without the "/"
		// (MOUNT/metadata for the whole mount).
		"kv-prefix": {checks: []componentCheck{{0, invalidComponent("kv list", kv.CheckPrefix)}},
			value: func(p string) string { return strings.TrimSuffix(p, "/") }},
		// A SPIFFE ID, written without its scheme: TRUST-DOMAIN/PATH.
		"spiffe-id": {checks: []componentCheck{{1, ValidSPIFFEID}},
			value: func(id string) string { return strings.TrimPrefix(id, "spiffe://") }},
		"auth-mount": name(authmethod.CheckMountName),
		"auth-role":  name(func(n string) error { return authmethod.CheckName("role", n) }),
		"auth-group": name(func(n string) error { return authmethod.CheckName("group", n) }),
	}
}

// PathTemplate is a parsed policy path template.
type PathTemplate struct {
	parts []templatePart
}

type templatePart struct {
	literal string
	field   string // a placeholder when set
	rule    pathRule
}

// ParsePathTemplate parses s, refusing an unknown rule, an unclosed or
// empty placeholder, and a literal with an empty, "." or ".." segment.
func ParsePathTemplate(s string) (*PathTemplate, error) {
	rules := pathRules()
	t := &PathTemplate{}
	for rest := s; rest != ""; {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			open = len(rest)
		}
		if lit := rest[:open]; lit != "" {
			if strings.ContainsAny(lit, "}*") {
				return nil, fmt.Errorf("path template %q: stray %q", s, lit)
			}
			t.parts = append(t.parts, templatePart{literal: lit})
		}
		rest = rest[open:]
		if rest == "" {
			break
		}
		end := strings.IndexByte(rest, '}')
		if end < 0 {
			return nil, fmt.Errorf("path template %q: unclosed placeholder", s)
		}
		field, ruleName, _ := strings.Cut(rest[1:end], ":")
		if ruleName == "" {
			ruleName = field
		}
		rule, ok := rules[ruleName]
		if field == "" || !ok {
			return nil, fmt.Errorf("path template %q: placeholder %q names no field or an unknown rule", s, rest[:end+1])
		}
		t.parts = append(t.parts, templatePart{field: field, rule: rule})
		rest = rest[end+1:]
	}
	// Placeholders stand for whole segments, so the literal text alone
	// must already be a clean path around them.
	skeleton := t.render(func(string) string { return "x" })
	for seg := range strings.SplitSeq(skeleton, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return nil, fmt.Errorf("path template %q: empty, \".\" or \"..\" segment", s)
		}
	}
	return t, nil
}

// Fields names the request fields t reads, in order.
func (t *PathTemplate) Fields() []string {
	var out []string
	for _, p := range t.parts {
		if p.field != "" && !slices.Contains(out, p.field) {
			out = append(out, p.field)
		}
	}
	return out
}

// Expand checks each component field returns and writes the path.
func (t *PathTemplate) Expand(field func(name string) string) (string, error) {
	type pending struct {
		componentCheck
		value string
	}
	var checks []pending
	for _, p := range t.parts {
		for _, c := range p.rule.checks {
			checks = append(checks, pending{c, field(p.field)})
		}
	}
	slices.SortStableFunc(checks, func(a, b pending) int { return a.stage - b.stage })
	for _, c := range checks {
		if err := c.check(c.value); err != nil {
			return "", err
		}
	}
	return t.render(field), nil
}

// render writes the path, each placeholder's value through its rule; an
// empty component takes the "/" before it along (a list of a whole kv
// mount is MOUNT/metadata).
func (t *PathTemplate) render(field func(name string) string) string {
	var b []byte
	for _, p := range t.parts {
		if p.field == "" {
			b = append(b, p.literal...)
			continue
		}
		v := field(p.field)
		if p.rule.value != nil {
			v = p.rule.value(v)
		}
		if v == "" {
			b = []byte(strings.TrimSuffix(string(b), "/"))
		}
		b = append(b, v...)
	}
	return string(b)
}

// KVDelete is the path and capability of a kv delete, as Vault has them:
// the latest version needs delete on MOUNT/data/PATH, given versions
// update on MOUNT/delete/PATH.
func KVDelete(mount, path string, versions bool) (string, policy.Capability, error) {
	sub, c := "data", policy.Delete
	if versions {
		sub, c = "delete", policy.Update
	}
	t, err := ParsePathTemplate("{mount}/" + sub + "/{path:kv-path}")
	if err != nil {
		return "", "", errs.Wrap(errs.Internal, "kv delete", err)
	}
	p, err := t.Expand(func(f string) string { return map[string]string{"mount": mount, "path": path}[f] })
	return p, c, err
}

// CheckProfileName refuses a profile name that is not one path segment
// of its own (ca/sign/PROFILE, sys/ca/sign/PROFILE): a "/", a glob, a
// space, "." or "..". Profiles are configured by name, so no real one is
// refused; a crafted one never reaches a path it does not spell.
func CheckProfileName(p string) error {
	if p == "." || p == ".." || strings.ContainsAny(p, "/* \t\n") {
		return errs.Errorf(errs.InvalidArgument, "profile %q: not a profile name (one path segment: no \"/\", \"*\", spaces, \".\" or \"..\")", p)
	}
	return nil
}
