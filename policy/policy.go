// Package policy decides what an authenticated caller may do. Policies are
// YAML documents of rules that grant capabilities on path patterns, with
// optional bindings (which SPIFFE IDs receive the policy) and name grants
// (which certificate names the holder may request):
//
//	rules:
//	  - path: "db/creds/payments-*"
//	    capabilities: [read, create]
//	  - path: "sys/**"
//	    capabilities: [deny]
//	bindings:
//	  spiffe_ids: ["spiffe://example.org/ns/payments/*"]
//	names:
//	  dns: ["*.payments.example.org"]
//	  uris: ["spiffe://example.org/ns/payments/*"]
//
// # Decisions
//
// Everything is denied by default: a request is allowed only when a rule of
// one of the caller's policies grants the capability on the path. A rule
// listing deny on a matching pattern denies every capability, whatever any
// other rule or policy grants: explicit deny always wins. Capabilities of
// all matching rules of all the caller's policies add up (there is no "most
// specific rule" precedence, so a broad grant cannot be shadowed into a
// narrower one by accident, only removed by deny).
//
// # Paths and patterns
//
// Paths are slash-separated segments ("db/creds/payments-ro") with no
// leading or trailing slash, no empty, "." or ".." segment, and no control
// characters; a malformed path is denied. In a pattern:
//
//   - "*" matches any run of characters (possibly none) within one segment,
//     never a slash: "db/creds/payments-*" matches "db/creds/payments-ro"
//     but not "db/creds/payments-ro/rotate"; "db/*/x" matches "db/a/x".
//   - "**" is allowed only as the whole last segment and matches one or
//     more further segments: "db/**" matches "db/a" and "db/a/b", not "db".
//   - Every other character matches itself. There is no escape: a path that
//     contains "*" can only be matched by a wildcard.
//
// # Administrative paths
//
// Paths whose first segment is "sys" are administrative (engines, roles,
// policies, the CA hierarchy, seal, audit, quotas). Two rules keep them
// apart from workloads:
//
//   - A pattern reaches a sys path only if its first segment is literally
//     "sys": "**", "*/policy" or "s*/x" never match "sys/…", so a wildcard
//     written for credentials cannot reach administration.
//   - On a sys path a capability is effective only together with sudo
//     granted on that path (by any matching rule). sudo itself is the
//     capability asked for sudo-only operations.
//
// # Names
//
// NamesAllowed checks the names in a certificate request: DNS names against
// names.dns patterns and URIs against names.uris patterns (same "*"-within-a-
// label rule, with "." and "/" as separators respectively, and "**" for any
// rest). A workload authenticated by SPIFFE ID X may always request exactly
// X. IP addresses and e-mail addresses cannot be granted yet.
//
// The policy named "root" is built in: it grants everything and cannot be
// stored.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Capability is an operation a rule may grant on a path.
type Capability string

// Capabilities. Deny is not a grant: a rule that lists it denies the path.
const (
	Read   Capability = "read"
	Create Capability = "create"
	Update Capability = "update"
	Delete Capability = "delete"
	List   Capability = "list"
	Sudo   Capability = "sudo"
	Deny   Capability = "deny"
)

// allCapabilities is every valid name, in a stable order for messages.
var allCapabilities = []Capability{Read, Create, Update, Delete, List, Sudo, Deny}

// Valid reports whether c is a known capability.
func (c Capability) Valid() bool { return slices.Contains(allCapabilities, c) }

// RootPolicy is the built-in policy that grants everything. It is the same
// name auth gives the root token.
const RootPolicy = "root"

// Limits on untrusted input, checked before any work is done on it.
const (
	MaxDocumentSize = 64 << 10
	MaxPathLen      = 1024
	maxNameLen      = 128
)

// Errors callers branch on.
var (
	// ErrInvalid wraps every parse and validation error.
	ErrInvalid = errors.New("invalid policy")
	// ErrPermissionDenied is matched by the error of a denied Decision and
	// by NamesAllowed's errors.
	ErrPermissionDenied = errors.New("permission denied")
)

// ParseError is a problem in a policy document. Line is 0 when the problem
// has no single place (the document is too large, or empty).
type ParseError struct {
	Policy string
	Line   int
	Msg    string
}

func (e *ParseError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("policy %q: line %d: %s", e.Policy, e.Line, e.Msg)
	}
	return fmt.Sprintf("policy %q: %s", e.Policy, e.Msg)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *ParseError) Unwrap() error { return ErrInvalid }

// Policy is one parsed, validated policy document.
type Policy struct {
	Name     string
	Rules    []Rule
	Bindings Bindings
	Names    Names
}

// Rule grants (or denies) capabilities on paths matching Path.
type Rule struct {
	Path         string
	Capabilities []Capability
	Line         int // where the rule's path is in the document

	pat  pattern
	caps capSet
	// templated rules hold {{identity}}: a Set instantiates them for its
	// caller, or drops them when the caller has no template value.
	templated bool
}

// Bindings lists the identities a policy applies to.
type Bindings struct {
	SPIFFEIDs []string

	pats []pattern
}

// Names lists the certificate names a policy's holder may request.
type Names struct {
	DNS  []string
	URIs []string

	dns  []pattern
	uris []pattern
}

// The document's shape. Scalars are decoded into lineStr so errors can point
// at the line; structs are decoded by yaml.v3 itself, whose KnownFields check
// reports unknown keys (a custom UnmarshalYAML on a struct would lose it).
type document struct {
	Rules    []ruleDoc    `yaml:"rules"`
	Bindings *bindingsDoc `yaml:"bindings"`
	Names    *namesDoc    `yaml:"names"`
}

type ruleDoc struct {
	Path         lineStr   `yaml:"path"`
	Capabilities []lineStr `yaml:"capabilities"`
}

type bindingsDoc struct {
	SPIFFEIDs []lineStr `yaml:"spiffe_ids"`
}

type namesDoc struct {
	DNS  []lineStr `yaml:"dns"`
	URIs []lineStr `yaml:"uris"`
}

// lineStr is a YAML string scalar and the line it is on.
type lineStr struct {
	v    string
	line int
}

func (s *lineStr) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!bool") {
		return &ParseError{Line: n.Line, Msg: "expected a string"}
	}
	s.v, s.line = n.Value, n.Line
	return nil
}

// yaml.v3's messages name Go types; these say it the way a user reads their
// file.
var (
	unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type`)
	lineMsg      = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
)

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// ValidName checks a policy name: lowercase letters, digits, '.', '_' and
// '-', starting with a letter or digit, at most 128 bytes.
func ValidName(name string) error {
	if len(name) > maxNameLen || !namePattern.MatchString(name) {
		return fmt.Errorf("%w: name %q: want lowercase letters, digits, '.', '_' or '-' (at most %d)", ErrInvalid, name, maxNameLen)
	}
	return nil
}

// Parse parses and validates the policy document doc named name. Unknown
// keys, unknown capabilities, malformed patterns and a document larger than
// MaxDocumentSize are errors (a *ParseError naming the line where there is
// one, matching ErrInvalid).
func Parse(name string, doc []byte) (*Policy, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if name == RootPolicy {
		return nil, &ParseError{Policy: name, Msg: "the root policy is built in and cannot be defined"}
	}
	if len(doc) > MaxDocumentSize {
		return nil, &ParseError{Policy: name, Msg: fmt.Sprintf("document is %d bytes, larger than %d", len(doc), MaxDocumentSize)}
	}
	var d document
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ParseError{Policy: name, Msg: "empty document"}
		}
		return nil, yamlError(name, err)
	}
	// A second document would be silently ignored: refuse it instead.
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ParseError{Policy: name, Line: extra.Line, Msg: "more than one YAML document"}
	}
	return compile(name, &d)
}

// yamlError turns a yaml.v3 error into a ParseError.
func yamlError(name string, err error) error {
	var pe *ParseError
	if errors.As(err, &pe) {
		pe.Policy = name
		return pe
	}
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		err = errors.New(te.Errors[0]) // the first problem, with its line
	}
	msg := err.Error()
	if m := unknownField.FindStringSubmatch(msg); m != nil {
		var line int
		fmt.Sscan(m[1], &line)
		return &ParseError{Policy: name, Line: line, Msg: fmt.Sprintf("unknown key %q", m[2])}
	}
	if m := lineMsg.FindStringSubmatch(msg); m != nil {
		var line int
		fmt.Sscan(m[1], &line)
		return &ParseError{Policy: name, Line: line, Msg: m[2]}
	}
	return &ParseError{Policy: name, Msg: strings.TrimPrefix(msg, "yaml: ")}
}

func compile(name string, d *document) (*Policy, error) {
	p := &Policy{Name: name}
	perr := func(line int, format string, args ...any) error {
		return &ParseError{Policy: name, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	for i, rd := range d.Rules {
		if rd.Path.line == 0 {
			return nil, perr(0, "rule %d: path is required", i+1)
		}
		tmpl, err := checkTemplate(rd.Path.v)
		if err != nil {
			return nil, perr(rd.Path.line, "rule %d: path %q: %v", i+1, rd.Path.v, err)
		}
		pat, err := compilePattern(rd.Path.v, '/')
		if err != nil {
			return nil, perr(rd.Path.line, "rule %d: path %q: %v", i+1, rd.Path.v, err)
		}
		if tmpl && pat.segs[0] == IdentityTemplate {
			// The first segment decides administrative isolation; keep it
			// literal.
			return nil, perr(rd.Path.line, "rule %d: path %q: %s cannot be the first segment", i+1, rd.Path.v, IdentityTemplate)
		}
		if len(rd.Capabilities) == 0 {
			return nil, perr(rd.Path.line, "rule %d (%s): capabilities are required", i+1, rd.Path.v)
		}
		r := Rule{Path: rd.Path.v, Line: rd.Path.line, pat: pat, templated: tmpl}
		for _, c := range rd.Capabilities {
			capa := Capability(c.v)
			if !capa.Valid() {
				return nil, perr(c.line, "rule %d (%s): unknown capability %q (want one of %s)", i+1, rd.Path.v, c.v, capList(allCapabilities))
			}
			if r.caps.has(capa) {
				return nil, perr(c.line, "rule %d (%s): capability %q listed twice", i+1, rd.Path.v, c.v)
			}
			r.caps = r.caps.with(capa)
			r.Capabilities = append(r.Capabilities, capa)
		}
		if r.caps.has(Deny) && len(r.Capabilities) > 1 {
			// Deny beside grants is almost certainly a mistake about what
			// the rule does: it denies everything on the path.
			return nil, perr(rd.Path.line, "rule %d (%s): deny cannot be combined with other capabilities", i+1, rd.Path.v)
		}
		p.Rules = append(p.Rules, r)
	}
	if d.Bindings != nil {
		for _, s := range d.Bindings.SPIFFEIDs {
			pat, err := compileSPIFFEPattern(s.v)
			if err != nil {
				return nil, perr(s.line, "bindings.spiffe_ids: %q: %v", s.v, err)
			}
			p.Bindings.SPIFFEIDs = append(p.Bindings.SPIFFEIDs, s.v)
			p.Bindings.pats = append(p.Bindings.pats, pat)
		}
	}
	if d.Names != nil {
		for _, s := range d.Names.DNS {
			pat, err := compileDNSPattern(s.v)
			if err != nil {
				return nil, perr(s.line, "names.dns: %q: %v", s.v, err)
			}
			p.Names.DNS = append(p.Names.DNS, s.v)
			p.Names.dns = append(p.Names.dns, pat)
		}
		for _, s := range d.Names.URIs {
			pat, err := compileURIPattern(s.v)
			if err != nil {
				return nil, perr(s.line, "names.uris: %q: %v", s.v, err)
			}
			p.Names.URIs = append(p.Names.URIs, s.v)
			p.Names.uris = append(p.Names.uris, pat)
		}
	}
	return p, nil
}

func capList(cs []Capability) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}

// capSet is a bit set of capabilities.
type capSet uint8

func capBit(c Capability) capSet {
	i := slices.Index(allCapabilities, c)
	if i < 0 {
		return 0
	}
	return 1 << i
}

func (s capSet) has(c Capability) bool    { b := capBit(c); return b != 0 && s&b != 0 }
func (s capSet) with(c Capability) capSet { return s | capBit(c) }
func (s capSet) String() string {
	var out []Capability
	for _, c := range allCapabilities {
		if s.has(c) {
			out = append(out, c)
		}
	}
	return "[" + capList(out) + "]"
}

// checkPath validates a request path (see the package documentation).
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case len(p) > MaxPathLen:
		return fmt.Errorf("path longer than %d bytes", MaxPathLen)
	case !utf8.ValidString(p):
		return errors.New("path is not valid UTF-8")
	case strings.IndexFunc(p, unicode.IsControl) >= 0:
		return errors.New("path contains a control character")
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("path %q has an empty, '.' or '..' segment", p)
		}
	}
	return nil
}
