package policy

import (
	"errors"
	"strings"
	"testing"
)

const perWorkload = `
rules:
  - path: "kv/data/apps/{{identity}}/*"
    capabilities: [read, update]
  - path: "kv/metadata/apps/{{identity}}"
    capabilities: [list]
  - path: "kv/data/apps/{{identity}}/forbidden"
    capabilities: [deny]
`

func TestTemplateIdentity(t *testing.T) {
	for _, tt := range []struct {
		name string
		sub  Subject
		want string
		ok   bool
	}{
		{"svid", Subject{SPIFFEID: "spiffe://example.org/ns/web/sa/app"}, "spiffe:example.org:ns:web:sa:app", true},
		{"svid wins over token", Subject{SPIFFEID: "spiffe://example.org/a", TokenID: "t1"}, "spiffe:example.org:a", true},
		{"token", Subject{TokenID: "AbC-12_x"}, "token:AbC-12_x", true},
		{"nothing", Subject{}, "", false},
		{"star in svid", Subject{SPIFFEID: "spiffe://example.org/ns/*"}, "", false},
		{"dotdot in svid", Subject{SPIFFEID: "spiffe://example.org/ns/../admin"}, "", false},
		{"empty segment", Subject{SPIFFEID: "spiffe://example.org//a"}, "", false},
		{"trailing slash", Subject{SPIFFEID: "spiffe://example.org/a/"}, "", false},
		{"percent", Subject{SPIFFEID: "spiffe://example.org/a%2Fb"}, "", false},
		{"colon injection", Subject{SPIFFEID: "spiffe://example.org/a:b"}, "", false},
		{"template injection", Subject{SPIFFEID: "spiffe://example.org/{{identity}}"}, "", false},
		{"query", Subject{SPIFFEID: "spiffe://example.org/a?x=1"}, "", false},
		{"not spiffe", Subject{SPIFFEID: "https://example.org/a"}, "", false},
		{"token with slash", Subject{TokenID: "a/b"}, "", false},
		{"token with star", Subject{TokenID: "*"}, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := TemplateIdentity(tt.sub)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("TemplateIdentity(%+v) = %q, %v; want %q, %v", tt.sub, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestTemplatedRules(t *testing.T) {
	p := mustParse(t, "apps", perWorkload)
	e, err := NewEngine(p)
	if err != nil {
		t.Fatal(err)
	}
	a := Subject{SPIFFEID: "spiffe://example.org/ns/a", Policies: []string{"apps"}}
	b := Subject{SPIFFEID: "spiffe://example.org/ns/b", Policies: []string{"apps"}}
	// An SVID whose path extends A's must not reach A's namespace.
	ab := Subject{SPIFFEID: "spiffe://example.org/ns/a/b", Policies: []string{"apps"}}
	tok := Subject{TokenID: "tok1", Policies: []string{"apps"}}
	bad := Subject{SPIFFEID: "spiffe://example.org/ns/*", Policies: []string{"apps"}}
	for _, tt := range []struct {
		name string
		sub  Subject
		path string
		c    Capability
		want bool
	}{
		{"A reads its own", a, "kv/data/apps/spiffe:example.org:ns:a/db", Read, true},
		{"A lists its own", a, "kv/metadata/apps/spiffe:example.org:ns:a", List, true},
		{"A refused B's", a, "kv/data/apps/spiffe:example.org:ns:b/db", Read, false},
		{"B reads its own", b, "kv/data/apps/spiffe:example.org:ns:b/db", Read, true},
		{"B refused A's", b, "kv/data/apps/spiffe:example.org:ns:a/db", Read, false},
		{"A/b refused A's", ab, "kv/data/apps/spiffe:example.org:ns:a/db", Read, false},
		{"A/b reads its own", ab, "kv/data/apps/spiffe:example.org:ns:a:b/db", Read, true},
		{"templated deny", a, "kv/data/apps/spiffe:example.org:ns:a/forbidden", Read, false},
		{"token", tok, "kv/data/apps/token:tok1/db", Update, true},
		{"token refused others", tok, "kv/data/apps/token:tok2/db", Read, false},
		{"the literal template is no grant", tok, "kv/data/apps/{{identity}}/db", Read, false},
		{"wildcard identity gets nothing", bad, "kv/data/apps/spiffe:example.org:ns:a/db", Read, false},
		{"wildcard identity not even the star path", bad, "kv/data/apps/spiffe:example.org:ns:*/db", Read, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := e.SetFor(tt.sub).Allowed(tt.path, tt.c)
			if d.Allowed != tt.want {
				t.Fatalf("%s on %s for %+v = %v (%s), want %v", tt.c, tt.path, tt.sub, d.Allowed, d.Reason, tt.want)
			}
		})
	}
}

func TestTemplateParseErrors(t *testing.T) {
	for _, path := range []string{
		"kv/data/app-{{identity}}/*", // only whole segments
		"kv/{{identity}}x",
		"kv/{{ identity }}",
		"kv/{{spiffe_id}}/x", // unknown template
		"{{identity}}/x",     // never the first segment
		"kv/data/{x}",
	} {
		_, err := Parse("t", []byte("rules:\n  - path: \""+path+"\"\n    capabilities: [read]\n"))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("path %q: %v, want a parse error", path, err)
		}
	}
}

// FuzzTemplate: for any identity and request path, a templated rule grants
// only paths inside the caller's own namespace, and only to a caller whose
// identity is template-safe.
func FuzzTemplate(f *testing.F) {
	for _, s := range [][2]string{
		{"spiffe://example.org/ns/a", "kv/data/apps/spiffe:example.org:ns:a/db"},
		{"spiffe://example.org/ns/*", "kv/data/apps/spiffe:example.org:ns:a/db"},
		{"spiffe://example.org/ns/../x", "kv/data/apps/x/db"},
		{"", "kv/data/apps/token:t/db"},
	} {
		f.Add(s[0], "t", s[1])
	}
	p, err := Parse("apps", []byte(perWorkload))
	if err != nil {
		f.Fatal(err)
	}
	e, err := NewEngine(p)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, spiffeID, tokenID, path string) {
		sub := Subject{SPIFFEID: spiffeID, TokenID: tokenID, Policies: []string{"apps"}}
		ident, ok := TemplateIdentity(sub)
		if ok && (ident == "" || strings.ContainsAny(ident, "/*{}") || ident == "." || ident == "..") {
			t.Fatalf("identity %q of %+v is not one safe segment", ident, sub)
		}
		d := e.SetFor(sub).Allowed(path, Read)
		if !d.Allowed {
			return
		}
		if !ok {
			t.Fatalf("%+v has no template identity but was granted %s: %s", sub, path, d.Reason)
		}
		if !strings.HasPrefix(path, "kv/data/apps/"+ident+"/") || strings.Count(path, "/") != 4 {
			t.Fatalf("%+v (identity %q) granted %s outside its namespace: %s", sub, ident, path, d.Reason)
		}
	})
}

const perNamespace = `
rules:
  - path: "secret/data/{{identity.metadata.namespace}}/*"
    capabilities: [read]
  - path: "secret/data/{{identity.metadata.namespace}}/{{identity.metadata.app}}/*"
    capabilities: [update]
`

// TestMetadataTemplates: {{identity.metadata.KEY}} is replaced by the
// caller's metadata value (from an auth method's claim_mappings) as one
// segment; a missing or unsafe value grants nothing.
func TestMetadataTemplates(t *testing.T) {
	e, err := NewEngine(mustParse(t, "ns", perNamespace))
	if err != nil {
		t.Fatal(err)
	}
	sub := func(md map[string]string) Subject {
		return Subject{TokenID: "t1", Policies: []string{"ns"}, Metadata: md}
	}
	a := sub(map[string]string{"namespace": "team-a", "app": "web"})
	for _, tt := range []struct {
		name string
		sub  Subject
		path string
		cap  Capability
		want bool
	}{
		{"own namespace", a, "secret/data/team-a/db", Read, true},
		{"other namespace", a, "secret/data/team-b/db", Read, false},
		{"two templates", a, "secret/data/team-a/web/cfg", Update, true},
		{"two templates, other app", a, "secret/data/team-a/api/cfg", Update, false},
		{"missing key", sub(map[string]string{"app": "web"}), "secret/data/team-a/db", Read, false},
		{"no metadata", sub(nil), "secret/data/team-a/db", Read, false},
		{"star value", sub(map[string]string{"namespace": "*"}), "secret/data/team-b/db", Read, false},
		{"slash value", sub(map[string]string{"namespace": "team-a/../team-b"}), "secret/data/team-b/db", Read, false},
		{"dotdot value", sub(map[string]string{"namespace": ".."}), "secret/data/../db", Read, false},
		{"template value", sub(map[string]string{"namespace": "{{identity}}"}), "secret/data/token:t1/db", Read, false},
		{"empty value", sub(map[string]string{"namespace": ""}), "secret/data//db", Read, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := e.SetFor(tt.sub).Allowed(tt.path, tt.cap); d.Allowed != tt.want {
				t.Fatalf("Allowed(%s, %s) = %v (%s), want %v", tt.path, tt.cap, d.Allowed, d.Reason, tt.want)
			}
		})
	}
}

func TestMetadataTemplateParse(t *testing.T) {
	for _, tt := range []struct {
		path string
		ok   bool
	}{
		{"secret/data/{{identity.metadata.namespace}}/*", true},
		{"secret/data/{{identity.metadata.ns_1-x}}", true},
		{"secret/data/{{identity.metadata.}}/x", false},
		{"secret/data/{{identity.metadata.a.b}}/x", false},
		{"secret/data/{{identity.metadata.a/b}}/x", false},
		{"secret/data/x{{identity.metadata.ns}}/y", false},
		{"secret/data/{{identity.meta.ns}}/y", false},
	} {
		_, err := Parse("p", []byte("rules:\n  - path: \""+tt.path+"\"\n    capabilities: [read]\n"))
		if (err == nil) != tt.ok {
			t.Errorf("Parse(%q): %v, want ok=%v", tt.path, err, tt.ok)
		}
	}
}

// FuzzMetadataTemplate: for any metadata value and request path, a rule
// templated on {{identity.metadata.namespace}} grants only paths inside
// that one segment, and only when the value is template-safe.
func FuzzMetadataTemplate(f *testing.F) {
	for _, s := range [][2]string{
		{"team-a", "secret/data/team-a/db"},
		{"*", "secret/data/x/db"},
		{"a/b", "secret/data/a/b/db"},
		{"..", "secret/data/../db"},
		{"", "secret/data//db"},
	} {
		f.Add(s[0], s[1])
	}
	p, err := Parse("ns", []byte(perNamespace))
	if err != nil {
		f.Fatal(err)
	}
	e, err := NewEngine(p)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ns, path string) {
		sub := Subject{TokenID: "t", Policies: []string{"ns"}, Metadata: map[string]string{"namespace": ns}}
		v, ok := TemplateMetadata(sub, "namespace")
		if ok && (v == "" || strings.ContainsAny(v, "/*{}") || v == "." || v == "..") {
			t.Fatalf("value %q is not one safe segment", v)
		}
		d := e.SetFor(sub).Allowed(path, Read)
		if !d.Allowed {
			return
		}
		if !ok {
			t.Fatalf("namespace %q has no template value but was granted %s: %s", ns, path, d.Reason)
		}
		if !strings.HasPrefix(path, "secret/data/"+v+"/") || strings.Count(path, "/") != 3 {
			t.Fatalf("namespace %q granted %s outside its namespace: %s", ns, path, d.Reason)
		}
	})
}
