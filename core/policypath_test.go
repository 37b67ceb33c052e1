package core

import (
	"testing"

	"github.com/sigil-ca/sigil/internal/errs"
)

// TestParsePathTemplate: a declaration that is not a clean path around
// known rules is refused when the server reads it, not used.
func TestParsePathTemplate(t *testing.T) {
	for _, bad := range []string{"", "{mount", "a/{}", "{:role}", "{mount:nope}", "a//{mount}", "../{mount}", "a/{mount}/", "/{mount}", "sys/*", "a}/b", "{mount}{role}x/./y"} {
		if _, err := ParsePathTemplate(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	for tmpl, want := range map[string]string{
		"sys/seal":                                    "sys/seal",
		"{mount}/creds/{role}":                        "db/creds/r",
		"{mount}/metadata/{prefix:kv-prefix}":         "db/metadata", // an empty prefix: the whole mount
		"sys/mounts/{mount:admin-mount}/roles/{role}": "sys/mounts/db/roles/r",
	} {
		p, err := ParsePathTemplate(tmpl)
		if err != nil {
			t.Fatalf("%q: %v", tmpl, err)
		}
		vals := map[string]string{"mount": "db", "role": "r", "prefix": ""}
		got, err := p.Expand(func(f string) string { return vals[f] })
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", tmpl, got, err, want)
		}
	}
}

// TestCheckProfileName: a profile is written into ca/sign/PROFILE and
// sys/ca/sign/PROFILE as one segment; anything that would be more (or a
// glob) is refused before a path is built.
func TestCheckProfileName(t *testing.T) {
	for p, ok := range map[string]bool{
		"server": true, "client": true, "intermediate": true, "spiffe-workload_2": true,
		".": false, "..": false, "../x": false, "a/b": false, "/a": false, "a/": false, "*": false, "a*": false, "a b": false, "a\tb": false,
	} {
		err := CheckProfileName(p)
		if (err == nil) != ok {
			t.Errorf("CheckProfileName(%q) = %v, want ok=%v", p, err, ok)
		}
		if err != nil && errs.KindOf(err) != errs.InvalidArgument {
			t.Errorf("CheckProfileName(%q): kind %v, want InvalidArgument", p, errs.KindOf(err))
		}
	}
}
