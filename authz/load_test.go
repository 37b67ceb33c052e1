package authz

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestRuleOfRefusals: every malformed access option is refused (Load then
// fails, and with it every server start), and the well-formed ones next to
// each refusal are accepted, so each case tests the one thing it changes.
func TestRuleOfRefusals(t *testing.T) {
	const bound = 5 << 20
	creds := (&sigilv1.CredsRequest{}).ProtoReflect().Descriptor() // mount, role: strings
	rollback := (&sigilv1.KVRollbackRequest{}).ProtoReflect().Descriptor()
	entry := (&sigilv1.CreateEntryRequest{}).ProtoReflect().Descriptor() // selectors: repeated string
	goRule := pathOf(policy.Create, func(*sigilv1.CredsRequest) (string, error) { return "x/y", nil })
	const PATH, PUBLIC, ANY, HANDLER = sigilv1.Access_PATH, sigilv1.Access_PUBLIC, sigilv1.Access_ANY_AUTHENTICATED, sigilv1.Access_HANDLER
	tests := []struct {
		name     string
		access   *sigilv1.Access
		input    protoreflect.MessageDescriptor
		override bool // the Go side has an override (goRule, capability create)
		wantErr  string
	}{
		{"public", &sigilv1.Access{Kind: PUBLIC, Reason: "r"}, creds, false, ""},
		{"public without a reason", &sigilv1.Access{Kind: PUBLIC}, creds, false, "wants a reason"},
		{"public with a path", &sigilv1.Access{Kind: PUBLIC, Reason: "r", Path: "a/b"}, creds, false, "wants a reason"},
		{"any-authenticated", &sigilv1.Access{Kind: ANY, Reason: "r"}, creds, false, ""},
		{"any-authenticated with a capability", &sigilv1.Access{Kind: ANY, Reason: "r", Capability: "read"}, creds, false, "wants a reason"},
		{"handler", &sigilv1.Access{Kind: HANDLER, Reason: "r"}, creds, false, ""},
		{"handler with a Go override", &sigilv1.Access{Kind: HANDLER, Reason: "r"}, creds, true, "override"},
		{"path", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount}/creds/{role}"}, creds, false, ""},
		{"path with a reason", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount}/creds/{role}", Reason: "r"}, creds, false, "and no reason"},
		{"path without a capability", &sigilv1.Access{Kind: PATH, Path: "{mount}/creds/{role}"}, creds, false, `capability ""`},
		{"path with sudo", &sigilv1.Access{Kind: PATH, Capability: "sudo", Path: "{mount}/creds/{role}"}, creds, false, `capability "sudo"`},
		{"path with deny", &sigilv1.Access{Kind: PATH, Capability: "deny", Path: "{mount}/creds/{role}"}, creds, false, `capability "deny"`},
		{"unknown placeholder rule", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount:nope}/creds"}, creds, false, "unknown rule"},
		{"unclosed placeholder", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount/creds"}, creds, false, "unclosed"},
		{"dot segment", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount}/../{role}"}, creds, false, `"." or ".." segment`},
		{"field the request lacks", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{name:role}/x"}, creds, false, "has no string field name"},
		{"field that is no string", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount}/{version:role}"}, rollback, false, "has no string field version"},
		{"repeated string field", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "x/{selectors:role}"}, entry, false, "has no string field selectors"},
		{"override", &sigilv1.Access{Kind: PATH, Capability: "create", Override: true}, creds, true, ""},
		{"override the Go side lacks", &sigilv1.Access{Kind: PATH, Capability: "create", Override: true}, creds, false, "override true, but the server has false"},
		{"Go override the option does not declare", &sigilv1.Access{Kind: PATH, Capability: "create", Path: "{mount}/creds/{role}"}, creds, true, "override false, but the server has true"},
		{"override of another capability", &sigilv1.Access{Kind: PATH, Capability: "read", Override: true}, creds, true, `for capability "create"`},
		{"size limit", &sigilv1.Access{Kind: PUBLIC, Reason: "r", MaxRequestBytes: 1}, creds, false, ""},
		{"size limit at the bound", &sigilv1.Access{Kind: PUBLIC, Reason: "r", MaxRequestBytes: bound}, creds, false, ""},
		{"size limit above the bound", &sigilv1.Access{Kind: PUBLIC, Reason: "r", MaxRequestBytes: bound + 1}, creds, false, "outside 1..5242880"},
		{"negative size limit", &sigilv1.Access{Kind: PATH, Capability: "read", Path: "{mount}/creds/{role}", MaxRequestBytes: -1}, creds, false, "outside 1..5242880"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ruleOf(tt.access, tt.input, goRule, tt.override, bound)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := DefaultMaxRequest
			if n := tt.access.GetMaxRequestBytes(); n != 0 {
				want = int(n)
			}
			if r.Kind != tt.access.GetKind() || r.Reason != tt.access.GetReason() || r.MaxRequest != want {
				t.Errorf("rule %v %q max %d, want %v %q max %d", r.Kind, r.Reason, r.MaxRequest, tt.access.GetKind(), tt.access.GetReason(), want)
			}
			if r.Kind == PATH && r.Capability != policy.Capability(tt.access.GetCapability()) {
				t.Errorf("capability %q, want %q", r.Capability, tt.access.GetCapability())
			}
		})
	}
}

// TestRuleOfPath: a path entry computes its path from the request's fields
// through the template, and an override entry through its Go function;
// a request of another type is an internal error, not a path.
func TestRuleOfPath(t *testing.T) {
	goRule := pathOf(policy.Create, func(r *sigilv1.CredsRequest) (string, error) { return "go/" + r.GetRole(), nil })
	creds := (&sigilv1.CredsRequest{}).ProtoReflect().Descriptor()
	tmpl, err := ruleOf(&sigilv1.Access{Kind: sigilv1.Access_PATH, Capability: "read", Path: "{mount}/creds/{role}"}, creds, Rule{}, false, 5<<20)
	if err != nil {
		t.Fatal(err)
	}
	over, err := ruleOf(&sigilv1.Access{Kind: sigilv1.Access_PATH, Capability: "create", Override: true, MaxRequestBytes: 100}, creds, goRule, true, 5<<20)
	if err != nil {
		t.Fatal(err)
	}
	if over.MaxRequest != 100 {
		t.Errorf("override's limit %d, want the option's 100", over.MaxRequest)
	}
	req := &sigilv1.CredsRequest{Mount: "db", Role: "r"}
	for _, tt := range []struct {
		name     string
		rule     Rule
		req      any
		wantPath string
		wantCap  policy.Capability
		wantErr  bool
	}{
		{"template", tmpl, req, "db/creds/r", policy.Read, false},
		{"override", over, req, "go/r", policy.Create, false},
		{"template, other request type", tmpl, &sigilv1.SSHSignRequest{Mount: "db", Role: "r"}, "", "", true},
		{"template, no request", tmpl, nil, "", "", true},
		{"override, other request type", over, &sigilv1.SSHSignRequest{}, "", "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, c, err := tt.rule.Resolve(tt.req)
			if (err != nil) != tt.wantErr || p != tt.wantPath || c != tt.wantCap {
				t.Errorf("Resolve = %q, %q, %v; want %q, %q, error %v", p, c, err, tt.wantPath, tt.wantCap, tt.wantErr)
			}
		})
	}
}

// TestLoadOverrides: the table loads from the compiled-in options, and
// each Go override is the rule of a method whose option says override.
func TestLoadOverrides(t *testing.T) {
	table, err := Load(nil, 5<<20)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(table.Methods()); n < 60 {
		t.Fatalf("only %d methods in the table", n)
	}
	for m := range overrides() {
		r, ok := table.Rule(m)
		if !ok || r.Kind != sigilv1.Access_PATH || r.path == nil {
			t.Errorf("%s: %+v, %v; want a path rule", m, r, ok)
		}
		if !slices.Contains(table.Methods(), m) {
			t.Errorf("%s missing from Methods", m)
		}
	}
	if _, err := Load(nil, 1<<10); err == nil || !strings.Contains(err.Error(), "max_request_bytes") {
		t.Errorf("Load with a bound below the declared limits: %v, want a max_request_bytes error", err)
	}
}
