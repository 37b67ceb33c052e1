package policy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
)

const payments = `
rules:
  - path: "db/creds/payments-*"
    capabilities: [read, create]
  - path: "db/creds/payments-admin"
    capabilities: [deny]
  - path: "ca/sign/workload"
    capabilities: [update]
  - path: "kv/payments/**"
    capabilities: [read, list]
bindings:
  spiffe_ids: ["spiffe://example.org/ns/payments/*"]
names:
  dns: ["*.payments.example.org", "**.internal.example.org"]
  uris: ["spiffe://example.org/ns/payments/*"]
`

const greedy = `
rules:
  - path: "**"
    capabilities: [read, create, update, delete, list, sudo]
  - path: "*/policy"
    capabilities: [read, sudo]
`

const ops = `
rules:
  - path: "sys/policy/*"
    capabilities: [read, list]
  - path: "sys/mounts/**"
    capabilities: [read, update, sudo]
  - path: "sys/seal"
    capabilities: [sudo]
  - path: "sys/audit/**"
    capabilities: [deny]
`

const sudoOnly = `
rules:
  - path: "sys/policy/*"
    capabilities: [sudo]
`

func mustParse(t testing.TB, name, doc string) *Policy {
	t.Helper()
	p, err := Parse(name, []byte(doc))
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return p
}

func TestAllowed(t *testing.T) {
	pol := map[string]*Policy{
		"payments":  mustParse(t, "payments", payments),
		"greedy":    mustParse(t, "greedy", greedy),
		"ops":       mustParse(t, "ops", ops),
		"sudo-only": mustParse(t, "sudo-only", sudoOnly),
		"deny-all":  mustParse(t, "deny-all", "rules:\n  - path: \"db/**\"\n    capabilities: [deny]\n"),
	}
	set := func(names ...string) *Set {
		var ps []*Policy
		for _, n := range names {
			ps = append(ps, pol[n])
		}
		return NewSet("", ps...)
	}
	cases := []struct {
		name     string
		set      *Set
		path     string
		cap      Capability
		allowed  bool
		inReason string
	}{
		// deny by default
		{"no policies", set(), "db/creds/payments-ro", Read, false, "no policy grants read on db/creds/payments-ro"},
		{"root grants all", rootSet(""), "sys/seal", Sudo, true, "root policy"},
		{"root grants admin", rootSet(""), "sys/policy/x", Delete, true, "root"},
		{"root still refuses malformed", rootSet(""), "../sys", Read, false, "malformed"},
		// globs: * within one segment
		{"star grants", set("payments"), "db/creds/payments-ro", Read, true, `policy "payments" rule 1 (db/creds/payments-*)`},
		{"star matches empty", set("payments"), "db/creds/payments-", Read, true, "rule 1"},
		{"star create", set("payments"), "db/creds/payments-rw", Create, true, ""},
		{"star not granted cap", set("payments"), "db/creds/payments-ro", Delete, false, "no policy grants delete"},
		{"star stays in segment", set("payments"), "db/creds/payments-ro/rotate", Read, false, "no policy grants"},
		{"star prefix mismatch", set("payments"), "db/creds/admin", Read, false, "no policy grants read on db/creds/admin"},
		{"literal segment", set("payments"), "ca/sign/workload", Update, true, "rule 3"},
		{"literal segment other cap", set("payments"), "ca/sign/workload", Read, false, ""},
		{"literal longer path", set("payments"), "ca/sign/workload/x", Update, false, ""},
		{"literal shorter path", set("payments"), "ca/sign", Update, false, ""},
		// ** as the last segment
		{"double star one", set("payments"), "kv/payments/a", Read, true, "rule 4"},
		{"double star deep", set("payments"), "kv/payments/a/b/c", List, true, "rule 4"},
		{"double star needs one more", set("payments"), "kv/payments", Read, false, ""},
		{"double star sibling", set("payments"), "kv/paymentsx/a", Read, false, ""},
		// deny wins
		{"deny in same policy", set("payments"), "db/creds/payments-admin", Read, false, `denied by policy "payments" rule 2`},
		{"deny beats other policy", set("payments", "greedy"), "db/creds/payments-admin", Read, false, "denied by"},
		{"deny policy beats grant", set("payments", "deny-all"), "db/creds/payments-ro", Read, false, `denied by policy "deny-all"`},
		{"deny order independent", set("deny-all", "payments"), "db/creds/payments-ro", Create, false, "denied"},
		{"deny only where it matches", set("payments", "deny-all"), "kv/payments/a", Read, true, ""},
		// grants add up across policies
		{"union of policies", set("payments", "greedy"), "anything/at/all", Delete, true, `policy "greedy" rule 1`},
		{"greedy any workload path", set("greedy"), "db/creds/admin", Read, true, ""},
		// admin separation: wildcards never reach sys/
		{"double star cannot reach sys", set("greedy"), "sys/seal", Sudo, false, "no policy grants sudo on sys/seal"},
		{"star first segment cannot reach sys", set("greedy"), "sys/policy", Read, false, "no policy grants"},
		{"greedy sys deep", set("greedy"), "sys/policy/payments", Delete, false, ""},
		{"greedy matches non-sys policy path", set("greedy"), "kv/policy", Read, true, "rule 1"},
		{"sys prefix lookalike is not admin", set("greedy"), "system/x", Read, true, ""},
		// sudo on sys/
		{"sys grant without sudo", set("ops"), "sys/policy/payments", Read, false, "no rule grants sudo"},
		{"sys grant with sudo elsewhere", set("ops", "sudo-only"), "sys/policy/payments", Read, true, `with sudo from policy "sudo-only"`},
		{"sys sudo alone is not read", set("sudo-only"), "sys/policy/payments", Read, false, "no policy grants read"},
		{"sys sudo capability", set("sudo-only"), "sys/policy/payments", Sudo, true, "granted with sudo"},
		{"sys same rule sudo", set("ops"), "sys/mounts/db", Update, true, `granted with sudo by policy "ops" rule 2`},
		{"sys same rule deep", set("ops"), "sys/mounts/db/config", Read, true, ""},
		{"sys cap not granted", set("ops"), "sys/mounts/db", Delete, false, "no policy grants delete"},
		{"sys seal sudo", set("ops"), "sys/seal", Sudo, true, ""},
		{"sys seal read", set("ops"), "sys/seal", Read, false, ""},
		{"sys deny wins over root-ish grants", set("ops", "greedy"), "sys/audit/file", Sudo, false, `denied by policy "ops" rule 4`},
		{"sys bare", set("ops"), "sys", Read, false, ""},
		// malformed input
		{"empty path", set("greedy"), "", Read, false, "malformed"},
		{"leading slash", set("greedy"), "/db/x", Read, false, "malformed"},
		{"trailing slash", set("greedy"), "db/x/", Read, false, "malformed"},
		{"double slash", set("greedy"), "db//x", Read, false, "malformed"},
		{"dot dot", set("greedy"), "db/../sys/seal", Read, false, "malformed"},
		{"dot", set("greedy"), "db/./x", Read, false, "malformed"},
		{"control char", set("greedy"), "db/x\n", Read, false, "malformed"},
		{"too long", set("greedy"), strings.Repeat("a/", MaxPathLen), Read, false, "malformed"},
		{"deny is not askable", set("greedy"), "db/x", Deny, false, "not a capability"},
		{"unknown capability", set("greedy"), "db/x", Capability("write"), false, "not a capability"},
	}
	if len(cases) < 40 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.set.Allowed(c.path, c.cap)
			if d.Allowed != c.allowed {
				t.Fatalf("Allowed(%q, %s) = %+v, want allowed=%v", c.path, c.cap, d, c.allowed)
			}
			if !strings.Contains(d.Reason, c.inReason) {
				t.Fatalf("reason %q does not contain %q", d.Reason, c.inReason)
			}
			err := d.Err()
			if c.allowed != (err == nil) || (err != nil && !errors.Is(err, ErrPermissionDenied)) {
				t.Fatalf("Err() = %v", err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, doc string
		line      int
		in        string
	}{
		{"unknown top key", "rules: []\nbinding:\n  spiffe_ids: []\n", 2, `unknown key "binding"`},
		{"unknown rule key", "rules:\n  - path: a\n    capability: [read]\n", 3, `unknown key "capability"`},
		{"unknown names key", "names:\n  dns: []\n  ip: [\"10.0.0.1\"]\n", 3, `unknown key "ip"`},
		{"bad capability", "rules:\n  - path: a\n    capabilities:\n      - read\n      - write\n", 5, `unknown capability "write"`},
		{"duplicate capability", "rules:\n  - path: a\n    capabilities: [read, read]\n", 3, "listed twice"},
		{"deny combined", "rules:\n  - path: a\n    capabilities: [deny, read]\n", 2, "deny cannot be combined"},
		{"missing path", "rules:\n  - capabilities: [read]\n", 0, "rule 1: path is required"},
		{"missing capabilities", "rules:\n  - path: a\n", 2, "capabilities are required"},
		{"double star in middle", "rules:\n  - path: a/**/b\n    capabilities: [read]\n", 2, `"**" is allowed only as the last segment`},
		{"double star in segment", "rules:\n  - path: a/x**\n    capabilities: [read]\n", 2, "must be a whole segment"},
		{"empty segment", "rules:\n  - path: a//b\n    capabilities: [read]\n", 2, "empty segment"},
		{"dotdot pattern", "rules:\n  - path: a/../sys\n    capabilities: [read]\n", 2, `segment ".."`},
		{"path not string", "rules:\n  - path: [a]\n    capabilities: [read]\n", 2, "expected a string"},
		{"rules not list", "rules: read\n", 1, "cannot unmarshal"},
		{"bad spiffe binding", "bindings:\n  spiffe_ids: [\"https://x/y\"]\n", 2, "starts with spiffe://"},
		{"bad uri name", "names:\n  uris: [\"noscheme\"]\n", 2, "scheme://"},
		{"dns double star alone", "names:\n  dns: [\"**\"]\n", 2, `"**"`},
		{"dns double star inside", "names:\n  dns: [\"a.**.org\"]\n", 2, "first label"},
		{"syntax", "rules:\n  - path: \"a\n", 0, ""},
		{"empty", "", 0, "empty document"},
		{"two documents", "rules: []\n---\nrules: []\n", 0, "more than one YAML document"},
		{"too large", "# " + strings.Repeat("x", MaxDocumentSize), 0, "larger than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("p", []byte(c.doc))
			if err == nil {
				t.Fatal("parsed")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not match ErrInvalid", err)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("%T is not a *ParseError", err)
			}
			if c.line != 0 && pe.Line != c.line {
				t.Fatalf("line %d, want %d: %v", pe.Line, c.line, err)
			}
			if !strings.Contains(err.Error(), c.in) || !strings.Contains(err.Error(), `policy "p"`) {
				t.Fatalf("error %q does not contain %q", err, c.in)
			}
		})
	}
	for _, name := range []string{"", "Root", "a b", "root", strings.Repeat("a", 200), "-x"} {
		if _, err := Parse(name, []byte("rules: []\n")); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: %v", name, err)
		}
	}
}

func TestBindings(t *testing.T) {
	e, err := NewEngine(
		mustParse(t, "payments", payments),
		mustParse(t, "deep", "bindings:\n  spiffe_ids: [\"spiffe://example.org/ns/**\"]\n"),
		mustParse(t, "exact", "bindings:\n  spiffe_ids: [\"spiffe://example.org/ns/payments/api\"]\n"),
		mustParse(t, "unbound", "rules: []\n"),
	)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		id   string
		want string
	}{
		{"spiffe://example.org/ns/payments/api", "deep,exact,payments"},
		{"spiffe://example.org/ns/payments/worker", "deep,payments"},
		{"spiffe://example.org/ns/payments/api/v2", "deep"},
		{"spiffe://example.org/ns/billing/api", "deep"},
		{"spiffe://other.org/ns/payments/api", ""},
		{"spiffe://example.org/ns/payments/../admin", ""},
		{"https://example.org/ns/payments/api", ""},
		{"", ""},
	}
	for _, c := range cases {
		if got := strings.Join(e.PoliciesFor(c.id), ","); got != c.want {
			t.Errorf("PoliciesFor(%q) = %q, want %q", c.id, got, c.want)
		}
	}
	// A bound workload gets the policy's grants; a token naming it too.
	s := e.SetFor(Subject{SPIFFEID: "spiffe://example.org/ns/payments/api"})
	if !s.Allowed("db/creds/payments-ro", Read).Allowed || s.Allowed("db/creds/admin", Read).Allowed {
		t.Fatal("bound workload decisions wrong")
	}
	tok := e.SetFor(Subject{Policies: []string{"payments", "gone"}})
	if !tok.Allowed("db/creds/payments-ro", Read).Allowed || tok.Allowed("sys/policy/x", Read).Allowed {
		t.Fatal("token decisions wrong")
	}
	if !e.SetFor(Subject{Policies: []string{RootPolicy}}).IsRoot() {
		t.Fatal("root not resolved")
	}
	if _, err := NewEngine(mustParse(t, "a", "rules: []\n"), mustParse(t, "a", "rules: []\n")); err == nil {
		t.Fatal("duplicate names accepted")
	}
}

func TestNamesAllowed(t *testing.T) {
	p := mustParse(t, "payments", payments)
	me := "spiffe://example.org/ns/billing/api"
	s := NewSet(me, p)
	cases := []struct {
		name string
		ok   bool
	}{
		{me, true}, // its own SPIFFE ID, granted by nothing else
		{"spiffe://example.org/ns/billing/other", false},
		{"spiffe://example.org/ns/payments/api", true},
		{"spiffe://example.org/ns/payments/api/x", false},
		{"spiffe://example.org/ns/payments/api#x", false},
		{"spiffe://example.org/ns/payments/%2e%2e", false},
		{"SPIFFE://example.org/ns/payments/api", true}, // scheme is case-insensitive
		{"https://example.org/ns/payments/api", false},
		{"api.payments.example.org", true},
		{"API.Payments.Example.org", true},
		{"a.b.payments.example.org", false},
		{"payments.example.org", false},
		{"db.internal.example.org", true},
		{"a.b.c.internal.example.org", true},
		{"internal.example.org", false},
		{"evil-payments.example.org", false},
		{"api.payments.example.org.evil.com", false},
		{"10.0.0.1", false},
		{"me@payments.example.org", false},
		{"*.payments.example.org", false},
		{"a..payments.example.org", false},
	}
	for _, c := range cases {
		err := s.NamesAllowed([]string{c.name})
		if (err == nil) != c.ok {
			t.Errorf("NamesAllowed(%q) = %v, want ok=%v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("%q: %v is not ErrPermissionDenied", c.name, err)
		}
	}
	// Several refusals are all reported.
	err := s.NamesAllowed([]string{"api.payments.example.org", "x.example.com", "10.0.0.1"})
	if err == nil || !strings.Contains(err.Error(), "x.example.com") || !strings.Contains(err.Error(), "10.0.0.1") {
		t.Fatalf("joined error %v", err)
	}
	// Without a SPIFFE ID nothing is implicit.
	if NewSet("").NamesAllowed([]string{me}) == nil {
		t.Fatal("token without SPIFFE ID got a SPIFFE name")
	}
	if rootSet("").NamesAllowed([]string{"anything.example", "10.0.0.1"}) != nil {
		t.Fatal("root refused")
	}
}

func TestExplain(t *testing.T) {
	e, err := NewEngine(mustParse(t, "payments", payments), mustParse(t, "greedy", greedy))
	if err != nil {
		t.Fatal(err)
	}
	e.invalid = map[string]error{"broken": errors.New("line 3: bad")}
	sub := Subject{SPIFFEID: "spiffe://example.org/ns/payments/api", Policies: []string{"greedy", "gone", "broken"}}

	x := e.Explain(sub, "db/creds/payments-admin", Read)
	out := x.String()
	for _, want := range []string{
		"identity:   spiffe://example.org/ns/payments/api",
		"payments (from binding spiffe://example.org/ns/payments/*)",
		"greedy (from token)",
		"gone (from token): does not exist, grants nothing",
		"broken (from token): invalid, grants nothing: line 3: bad",
		"payments rule 1 db/creds/payments-* [read, create]: grants",
		"payments rule 2 db/creds/payments-admin [deny]: denies",
		"payments rule 3 ca/sign/workload [update]: no match",
		"greedy rule 1 ** [read, create, update, delete, list, sudo]: grants",
		`decision:   denied: read on db/creds/payments-admin denied by policy "payments" rule 2`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks %q:\n%s", want, out)
		}
	}

	out = e.Explain(sub, "sys/policy", Read).String()
	for _, want := range []string{
		"path:       sys/policy (administrative: needs sudo)",
		"greedy rule 1 ** [read, create, update, delete, list, sudo]: cannot reach sys/",
		"greedy rule 2 */policy [read, sudo]: cannot reach sys/",
		"decision:   denied: no policy grants read on sys/policy",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks %q:\n%s", want, out)
		}
	}
	if x := e.Explain(Subject{}, "db/x", Read); x.Decision.Allowed || !strings.Contains(x.String(), "policies:   none") {
		t.Errorf("empty subject:\n%s", x)
	}
}

// memStore is a policy Store in memory.
type memStore struct {
	mu   sync.Mutex
	docs map[string][]byte
	errs int
}

var errNotFound = errors.New("not found")

func (m *memStore) Put(_ context.Context, name string, doc []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.docs[name] = doc
	return nil
}

func (m *memStore) Get(_ context.Context, name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.docs[name]
	if !ok {
		return nil, errNotFound
	}
	return d, nil
}

func (m *memStore) List(context.Context) (map[string][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.errs > 0 {
		m.errs--
		return nil, errors.New("db down")
	}
	return maps.Clone(m.docs), nil
}

func (m *memStore) Delete(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.docs[name]; !ok {
		return errNotFound
	}
	delete(m.docs, name)
	return nil
}

func TestManager(t *testing.T) {
	ctx := t.Context()
	st := &memStore{docs: map[string][]byte{"legacy": []byte("rules:\n  - path: a\n    capabilities: [write]\n")}}
	m := NewManager(st, 0)
	if _, err := m.Put(ctx, "bad", []byte("rulez: []\n")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid put: %v", err)
	}
	if _, err := st.Get(ctx, "bad"); err == nil {
		t.Fatal("invalid document stored")
	}
	if _, err := m.Put(ctx, "payments", []byte(payments)); err != nil {
		t.Fatal(err)
	}
	e, err := m.Engine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Policy("payments"); !ok || e.Invalid()["legacy"] == nil {
		t.Fatalf("engine: invalid=%v", e.Invalid())
	}
	e2, _ := m.Engine(ctx)
	if e2 != e {
		t.Fatal("engine not cached")
	}
	names, err := m.List(ctx)
	if err != nil || fmt.Sprint(names) != "[legacy payments]" {
		t.Fatalf("list %v %v", names, err)
	}
	// A local delete takes effect at once.
	if err := m.Delete(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	e, err = m.Engine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e.SetFor(Subject{Policies: []string{"payments"}}).Allowed("db/creds/payments-ro", Read).Allowed {
		t.Fatal("deleted policy still grants")
	}
	if err := m.Delete(ctx, "payments"); !errors.Is(err, errNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := m.Get(ctx, "payments"); !errors.Is(err, errNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	// A store error reaches the caller (which then denies).
	m2 := NewManager(st, 0)
	st.errs = 1
	if _, err := m2.Engine(ctx); err == nil {
		t.Fatal("store error swallowed")
	}
}

func TestGlobSegment(t *testing.T) {
	cases := []struct {
		pat, s string
		ok     bool
	}{
		{"*", "", true}, {"*", "abc", true}, {"a*", "a", true}, {"a*c", "abbbc", true},
		{"a*c", "abcd", false}, {"*b*", "aba", true}, {"*x", "abc", false},
		{"a*b*c", "aXbYc", true}, {"a*b*c", "acb", false}, {"abc", "abc", true}, {"abc", "abd", false},
	}
	for _, c := range cases {
		if globSegment(c.pat, c.s) != c.ok {
			t.Errorf("globSegment(%q, %q) != %v", c.pat, c.s, c.ok)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{payments, greedy, ops, sudoOnly, "", "rules: []", "names:\n  dns: [\"**.a\"]\n",
		"rules:\n  - path: a/**\n    capabilities: [deny]\n", "&a [*a, *a]"} {
		f.Add([]byte(s), "db/creds/payments-ro", "x.payments.example.org")
	}
	f.Fuzz(func(t *testing.T, doc []byte, path, name string) {
		p, err := Parse("fuzz", doc)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not match ErrInvalid", err)
			}
			return
		}
		s := NewSet("", p)
		for _, c := range allCapabilities {
			d := s.Allowed(path, c)
			// Invariants: no wildcard reaches sys/, and deny is never granted.
			if d.Allowed && c == Deny {
				t.Fatal("deny granted")
			}
			if d.Allowed && (path == "sys" || strings.HasPrefix(path, "sys/")) {
				ok := false
				for _, r := range p.Rules {
					if strings.HasPrefix(r.Path, "sys/") && r.caps.has(Sudo) {
						ok = true
					}
				}
				if !ok {
					t.Fatalf("admin path %q allowed without a sys/ sudo rule", path)
				}
			}
		}
		_ = s.NamesAllowed([]string{name})
	})
}
