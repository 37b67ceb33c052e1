package policy

import (
	"fmt"
	"strings"
)

// Explanation says how a decision was reached, for
// `sigil policy test --identity ID --path P --capability C`.
type Explanation struct {
	Subject    Subject
	Path       string
	Capability Capability
	Admin      bool // path is administrative (sys/…)
	Policies   []ExplainedPolicy
	Rules      []ExplainedRule
	Decision   Decision
}

// ExplainedPolicy is one policy the subject holds and why.
type ExplainedPolicy struct {
	Name    string
	Source  string // "token", "binding spiffe://…" or "token, binding …"
	Missing bool   // named but not stored (grants nothing)
	Invalid error  // stored but no longer parses (grants nothing)
}

// ExplainedRule is one rule of the subject's policies and what it did.
type ExplainedRule struct {
	Policy       string
	Index        int
	Path         string
	Capabilities []Capability
	// Outcome is "denies", "grants", "grants sudo", "matches" (without the
	// capability), "no match", or "cannot reach sys/" (a pattern that
	// would match but does not literally start with sys/).
	Outcome string
}

// Explain evaluates path and capability for sub as Allowed does and records
// every policy and rule involved.
func (e *Engine) Explain(sub Subject, path string, c Capability) *Explanation {
	set := e.SetFor(sub)
	x := &Explanation{Subject: sub, Path: path, Capability: c, Decision: set.Allowed(path, c)}
	var segs []string
	if checkPath(path) == nil {
		segs = strings.Split(path, "/")
		x.Admin = segs[0] == adminSegment
	}
	var uri []string
	if sub.SPIFFEID != "" {
		uri, _ = uriSegments(sub.SPIFFEID)
	}
	for _, n := range e.resolve(sub) {
		var src []string
		for _, tp := range sub.Policies {
			if tp == n {
				src = append(src, "token")
				break
			}
		}
		ep := ExplainedPolicy{Name: n}
		p, ok := e.byName[n]
		switch {
		case n == RootPolicy:
		case ok:
			if uri != nil {
				if b := bindingFor(p, uri); b != "" {
					src = append(src, "binding "+b)
				}
			}
		case e.invalid[n] != nil:
			ep.Invalid = e.invalid[n]
		default:
			ep.Missing = true
		}
		ep.Source = strings.Join(src, ", ")
		x.Policies = append(x.Policies, ep)
		if !ok || segs == nil {
			continue
		}
		for i := range p.Rules {
			r := &p.Rules[i]
			er := ExplainedRule{Policy: n, Index: i + 1, Path: r.Path, Capabilities: r.Capabilities}
			switch {
			case x.Admin && !r.pat.literalFirst(adminSegment) && r.pat.match(segs):
				er.Outcome = "cannot reach sys/"
			case !ruleMatches(r, segs, x.Admin):
				er.Outcome = "no match"
			case r.caps.has(Deny):
				er.Outcome = "denies"
			case r.caps.has(c):
				er.Outcome = "grants"
			case r.caps.has(Sudo):
				er.Outcome = "grants sudo"
			default:
				er.Outcome = "matches"
			}
			x.Rules = append(x.Rules, er)
		}
	}
	return x
}

// String renders the explanation for a terminal.
func (x *Explanation) String() string {
	var b strings.Builder
	id := x.Subject.SPIFFEID
	if id == "" {
		id = "(no SPIFFE ID)"
	}
	fmt.Fprintf(&b, "identity:   %s\n", id)
	kind := "workload"
	if x.Admin {
		kind = "administrative: needs sudo"
	}
	fmt.Fprintf(&b, "path:       %s (%s)\n", x.Path, kind)
	fmt.Fprintf(&b, "capability: %s\n", x.Capability)
	if len(x.Policies) == 0 {
		b.WriteString("policies:   none\n")
	} else {
		b.WriteString("policies:\n")
	}
	for _, p := range x.Policies {
		fmt.Fprintf(&b, "  %s", p.Name)
		if p.Source != "" {
			fmt.Fprintf(&b, " (from %s)", p.Source)
		}
		switch {
		case p.Missing:
			b.WriteString(": does not exist, grants nothing")
		case p.Invalid != nil:
			fmt.Fprintf(&b, ": invalid, grants nothing: %v", p.Invalid)
		}
		b.WriteByte('\n')
	}
	if len(x.Rules) > 0 {
		b.WriteString("rules:\n")
	}
	for _, r := range x.Rules {
		fmt.Fprintf(&b, "  %s rule %d %s [%s]: %s\n", r.Policy, r.Index, r.Path, capList(r.Capabilities), r.Outcome)
	}
	verdict := "denied"
	if x.Decision.Allowed {
		verdict = "allowed"
	}
	fmt.Fprintf(&b, "decision:   %s: %s\n", verdict, x.Decision.Reason)
	return b.String()
}
