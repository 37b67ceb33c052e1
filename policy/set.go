package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// adminSegment is the first segment of administrative paths.
const adminSegment = "sys"

// Decision is the outcome of Set.Allowed. Reason names the policy and rule
// that decided, or says that no policy grants the capability; it always
// names the path, so it can be shown to the caller and written to the audit
// log as it is.
type Decision struct {
	Allowed bool
	Reason  string
}

// Err returns nil for an allowed decision and a *DeniedError otherwise.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	return &DeniedError{Reason: d.Reason}
}

// DeniedError is a refusal; errors.Is(err, ErrPermissionDenied) holds.
type DeniedError struct{ Reason string }

func (e *DeniedError) Error() string { return "permission denied: " + e.Reason }

// Unwrap makes errors.Is(err, ErrPermissionDenied) true.
func (e *DeniedError) Unwrap() error { return ErrPermissionDenied }

// boundRule is a rule and where it came from.
type boundRule struct {
	policy string
	index  int // 1-based, as people count rules
	rule   *Rule
}

func (b boundRule) String() string {
	return fmt.Sprintf("policy %q rule %d (%s)", b.policy, b.index, b.rule.Path)
}

// Set is the compiled set of policies that applies to one caller. It is
// immutable and safe for concurrent use.
type Set struct {
	spiffeID string
	root     bool
	policies []*Policy
	rules    []boundRule
}

// NewSet combines policies for a caller whose SPIFFE ID is spiffeID ("" for
// a caller without one, such as a token). Use Engine.SetFor to resolve
// names and bindings; NewSet is for callers that already hold the policies.
func NewSet(spiffeID string, policies ...*Policy) *Set {
	return newSet(Subject{SPIFFEID: spiffeID}, policies)
}

// newSet binds the policies' rules for sub, instantiating templated rules
// with its identity (TemplateIdentity) or leaving them out when it has
// none.
func newSet(sub Subject, policies []*Policy) *Set {
	s := &Set{spiffeID: sub.SPIFFEID}
	for _, p := range policies {
		if p == nil {
			continue
		}
		s.policies = append(s.policies, p)
		for i := range p.Rules {
			r := &p.Rules[i]
			if r.templated {
				pat, path, ok := r.pat.instantiate(sub, r.Path)
				if !ok {
					continue
				}
				inst := *r
				inst.pat, inst.Path = pat, path
				r = &inst
			}
			s.rules = append(s.rules, boundRule{policy: p.Name, index: i + 1, rule: r})
		}
	}
	return s
}

// rootSet grants everything.
func rootSet(spiffeID string) *Set { return &Set{spiffeID: spiffeID, root: true} }

// IsRoot reports whether the set holds the built-in root policy.
func (s *Set) IsRoot() bool { return s.root }

// Policies returns the names of the policies in the set.
func (s *Set) Policies() []string {
	if s.root {
		return []string{RootPolicy}
	}
	out := make([]string, len(s.policies))
	for i, p := range s.policies {
		out[i] = p.Name
	}
	return out
}

// ruleMatches reports whether a rule's pattern applies to a path, with the
// administrative isolation: on a sys path only patterns that literally
// start with "sys" apply.
func ruleMatches(r *Rule, segs []string, admin bool) bool {
	if admin && !r.pat.literalFirst(adminSegment) {
		return false
	}
	return r.pat.match(segs)
}

// Allowed decides whether the set grants capability c on path (see the
// package documentation for the rules).
func (s *Set) Allowed(path string, c Capability) Decision {
	if !c.Valid() || c == Deny {
		return Decision{Reason: fmt.Sprintf("%q is not a capability one can ask for on %s", c, path)}
	}
	if err := checkPath(path); err != nil {
		return Decision{Reason: fmt.Sprintf("malformed path %q: %v", path, err)}
	}
	if s.root {
		return Decision{Allowed: true, Reason: fmt.Sprintf("%s on %s granted by the root policy", c, path)}
	}
	segs := strings.Split(path, "/")
	admin := segs[0] == adminSegment
	var grant, sudo *boundRule
	for i := range s.rules {
		b := &s.rules[i]
		if !ruleMatches(b.rule, segs, admin) {
			continue
		}
		if b.rule.caps.has(Deny) {
			// Explicit deny wins at once, whatever else matches.
			return Decision{Reason: fmt.Sprintf("%s on %s denied by %s", c, path, b)}
		}
		if grant == nil && b.rule.caps.has(c) {
			grant = b
		}
		if sudo == nil && b.rule.caps.has(Sudo) {
			sudo = b
		}
	}
	switch {
	case grant == nil:
		return Decision{Reason: fmt.Sprintf("no policy grants %s on %s", c, path)}
	case !admin:
		return Decision{Allowed: true, Reason: fmt.Sprintf("%s on %s granted by %s", c, path, grant)}
	case sudo == nil:
		return Decision{Reason: fmt.Sprintf("%s grants %s on administrative path %s, but no rule grants sudo there", grant, c, path)}
	case c == Sudo || grant == sudo:
		return Decision{Allowed: true, Reason: fmt.Sprintf("%s on administrative path %s granted with sudo by %s", c, path, grant)}
	default:
		return Decision{Allowed: true, Reason: fmt.Sprintf("%s on administrative path %s granted by %s, with sudo from %s", c, path, grant, sudo)}
	}
}

// NameError is a certificate name the set does not allow.
type NameError struct {
	Name   string
	Reason string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("permission denied: certificate name %q: %s", e.Name, e.Reason)
}

// Unwrap makes errors.Is(err, ErrPermissionDenied) true.
func (e *NameError) Unwrap() error { return ErrPermissionDenied }

// NamesAllowed checks the names of a certificate request: DNS names against
// the names.dns grants, URIs (anything with "://") against names.uris, and
// the caller's own SPIFFE ID, which is always allowed. It returns nil or the
// *NameError of every refused name, joined.
func (s *Set) NamesAllowed(names []string) error {
	var errs []error
	for _, n := range names {
		if err := s.nameAllowed(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Set) nameAllowed(name string) error {
	if s.root {
		return nil
	}
	if s.spiffeID != "" && name == s.spiffeID {
		return nil
	}
	if strings.Contains(name, "://") {
		segs, err := uriSegments(name)
		if err != nil {
			return &NameError{Name: name, Reason: err.Error()}
		}
		for _, p := range s.policies {
			for _, pat := range p.Names.uris {
				if pat.match(segs) {
					return nil
				}
			}
		}
		return &NameError{Name: name, Reason: "no policy grants this URI"}
	}
	segs, err := dnsSegments(name)
	if err != nil {
		return &NameError{Name: name, Reason: err.Error()}
	}
	for _, p := range s.policies {
		for _, pat := range p.Names.dns {
			if pat.match(segs) {
				return nil
			}
		}
	}
	return &NameError{Name: name, Reason: "no policy grants this DNS name"}
}

// Engine holds every stored policy and resolves callers to a Set. It is
// immutable: a Manager builds a new one when policies change.
type Engine struct {
	byName  map[string]*Policy
	names   []string         // sorted
	invalid map[string]error // stored documents that no longer parse
}

// NewEngine builds an engine; two policies with one name are an error.
func NewEngine(policies ...*Policy) (*Engine, error) {
	e := &Engine{byName: map[string]*Policy{}}
	for _, p := range policies {
		if _, dup := e.byName[p.Name]; dup {
			return nil, fmt.Errorf("%w: two policies named %q", ErrInvalid, p.Name)
		}
		e.byName[p.Name] = p
		e.names = append(e.names, p.Name)
	}
	slices.Sort(e.names)
	return e, nil
}

// Policy returns the named policy.
func (e *Engine) Policy(name string) (*Policy, bool) {
	p, ok := e.byName[name]
	return p, ok
}

// Invalid returns the stored policies that failed to parse when the engine
// was loaded, with their errors. They grant nothing.
func (e *Engine) Invalid() map[string]error { return e.invalid }

// PoliciesFor returns, sorted, the names of the policies whose bindings
// match spiffeID.
func (e *Engine) PoliciesFor(spiffeID string) []string {
	segs, err := uriSegments(spiffeID)
	if err != nil || !strings.HasPrefix(spiffeID, "spiffe://") {
		return nil
	}
	var out []string
	for _, n := range e.names {
		if bindingFor(e.byName[n], segs) != "" {
			out = append(out, n)
		}
	}
	return out
}

// bindingFor returns the first binding pattern of p matching segs, or "".
func bindingFor(p *Policy, segs []string) string {
	for i, pat := range p.Bindings.pats {
		if pat.match(segs) {
			return p.Bindings.SPIFFEIDs[i]
		}
	}
	return ""
}

// Subject is a caller as policy sees it: the SPIFFE ID it authenticated
// with (mTLS), if any, and the policies attached to its token, if any.
type Subject struct {
	SPIFFEID string
	// TokenID is the id of the caller's token, if it used one; it is the
	// {{identity}} of a caller without a SPIFFE ID (TemplateIdentity).
	TokenID  string
	Policies []string
	// Metadata is what an auth method mapped for the caller at login: the
	// values of {{identity.metadata.KEY}} (TemplateMetadata).
	Metadata map[string]string
}

// SetFor resolves a subject's policies: those named by its token plus those
// bound to its SPIFFE ID. Names of policies that do not exist grant
// nothing (a deleted policy must not fail its holders' other grants).
func (e *Engine) SetFor(sub Subject) *Set {
	names := e.resolve(sub)
	if slices.Contains(names, RootPolicy) {
		return rootSet(sub.SPIFFEID)
	}
	ps := make([]*Policy, 0, len(names))
	for _, n := range names {
		if p, ok := e.byName[n]; ok {
			ps = append(ps, p)
		}
	}
	return newSet(sub, ps)
}

// resolve returns the subject's policy names, sorted and unique.
func (e *Engine) resolve(sub Subject) []string {
	names := slices.Clone(sub.Policies)
	if sub.SPIFFEID != "" {
		names = append(names, e.PoliciesFor(sub.SPIFFEID)...)
	}
	slices.Sort(names)
	return slices.Compact(names)
}
