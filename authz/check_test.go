package authz_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sigil-ca/sigil/authz"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// callerWith is a caller whose one policy is doc.
func callerWith(t *testing.T, doc string) *core.Caller {
	t.Helper()
	p, err := policy.Parse("p", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return &core.Caller{Policies: policy.NewSet("", p)}
}

// pass is the wanted error kind of a call that is let through.
const pass errs.Kind = -1

const checkPolicy = `rules:
  - path: "db/creds/r"
    capabilities: [read]
  - path: "sys/storage/snapshot"
    capabilities: [read, sudo]
`

// TestCheck applies the table to calls by a caller granted read on
// db/creds/r: the error kind and message, and the decision recorded on the
// caller (the audit's), for each kind of entry and for a method without
// one, which is refused and logged as a bug.
func TestCheck(t *testing.T) {
	var logged bytes.Buffer
	table, err := authz.Load(slog.New(slog.NewTextHandler(&logged, nil)), maxMessage)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		method     string
		req        any
		wantKind   errs.Kind // pass: no error
		wantMsg    string
		wantPath   string
		decided    bool // a decision is recorded
		allowed    bool
		wantLogged bool
	}{
		{"granted path", sigilv1.EngineService_Creds_FullMethodName, &sigilv1.CredsRequest{Mount: "db", Role: "r"}, pass, "", "db/creds/r", true, true, false},
		{"path without the grant", sigilv1.EngineService_Creds_FullMethodName, &sigilv1.CredsRequest{Mount: "db", Role: "other"}, errs.PermissionDenied, "db/creds/other", "db/creds/other", true, false, false},
		{"capability without the grant", sigilv1.EngineService_WriteRole_FullMethodName, &sigilv1.WriteRoleRequest{Mount: "db", Role: "r"}, errs.PermissionDenied, "sys/mounts/db/roles/r", "sys/mounts/db/roles/r", true, false, false},
		{"bad path component", sigilv1.EngineService_Creds_FullMethodName, &sigilv1.CredsRequest{Mount: "../x", Role: "r"}, errs.InvalidArgument, "", "", false, false, false},
		{"any authenticated", sigilv1.CAService_GetRoot_FullMethodName, &sigilv1.GetRootRequest{}, pass, "", "", true, true, false},
		{"handler", sigilv1.TokenService_Lookup_FullMethodName, &sigilv1.LookupTokenRequest{}, pass, "", "", false, false, false},
		{"public", sigilv1.SysService_Status_FullMethodName, &sigilv1.StatusRequest{}, pass, "", "", false, false, false},
		{"health", healthpb.Health_Check_FullMethodName, &healthpb.HealthCheckRequest{}, pass, "", "", false, false, false},
		{"no entry", "/sigil.v1.NoService/Nothing", &sigilv1.StatusRequest{}, errs.PermissionDenied, "method /sigil.v1.NoService/Nothing has no authorization rule", "", true, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logged.Reset()
			caller := callerWith(t, checkPolicy)
			err := table.Check(context.Background(), caller, tt.method, tt.req)
			if tt.wantKind == pass && err != nil || tt.wantKind != pass && (errs.KindOf(err) != tt.wantKind || !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Fatalf("Check = %v (%v), want kind %v naming %q", err, errs.KindOf(err), tt.wantKind, tt.wantMsg)
			}
			if d := caller.Decision; (d != nil) != tt.decided || d != nil && (d.Allowed != tt.allowed || caller.Path != tt.wantPath) {
				t.Errorf("decision %+v on %q, want decided %v allowed %v on %q", d, caller.Path, tt.decided, tt.allowed, tt.wantPath)
			}
			if got := strings.Contains(logged.String(), "BUG: method has no authorization table entry"); got != tt.wantLogged {
				t.Errorf("logged %q, want the BUG line: %v", logged.String(), tt.wantLogged)
			}
		})
	}
}

// TestCheckStream: a streaming call is checked against fixed-path,
// public and any-authenticated entries only; the path is returned when a
// grant was checked, so the transport can audit a refusal.
func TestCheckStream(t *testing.T) {
	table := loadTable(t)
	for _, tt := range []struct {
		name     string
		method   string
		doc      string
		wantKind errs.Kind
		wantPath string
	}{
		{"fixed path granted", sigilv1.SnapshotService_Save_FullMethodName, checkPolicy, pass, "sys/storage/snapshot"},
		{"fixed path refused", sigilv1.SnapshotService_Save_FullMethodName, "rules:\n  - path: \"db/creds/r\"\n    capabilities: [read]\n", errs.PermissionDenied, "sys/storage/snapshot"},
		{"public", healthpb.Health_Watch_FullMethodName, checkPolicy, pass, ""},
		{"any authenticated", sigilv1.CAService_GetRoot_FullMethodName, checkPolicy, pass, ""},
		{"path from a request", sigilv1.EngineService_Creds_FullMethodName, checkPolicy, errs.Internal, ""},
		{"capability from a request", sigilv1.KVService_Delete_FullMethodName, checkPolicy, errs.PermissionDenied, ""},
		{"handler", sigilv1.TokenService_Lookup_FullMethodName, checkPolicy, errs.PermissionDenied, ""},
		{"no entry", "/sigil.v1.NoService/Nothing", checkPolicy, errs.PermissionDenied, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path, err := table.CheckStream(callerWith(t, tt.doc), tt.method)
			if tt.wantKind == pass && err != nil || tt.wantKind != pass && errs.KindOf(err) != tt.wantKind || path != tt.wantPath {
				t.Errorf("CheckStream = %q, %v (%v); want %q, kind %v", path, err, errs.KindOf(err), tt.wantPath, tt.wantKind)
			}
		})
	}
}

// TestCheckSize: a request over its method's limit is refused with
// ResourceExhausted naming the limit; one at the limit passes.
func TestCheckSize(t *testing.T) {
	table := loadTable(t)
	pad := func(n int) string { return strings.Repeat("x", n) }
	for _, tt := range []struct {
		name    string
		method  string
		req     any
		wantMsg string // "": accepted
	}{
		{"default limit", sigilv1.PolicyService_Read_FullMethodName, &sigilv1.ReadPolicyRequest{Name: pad(authz.DefaultMaxRequest - 4)}, ""},
		{"over the default limit", sigilv1.PolicyService_Read_FullMethodName, &sigilv1.ReadPolicyRequest{Name: pad(authz.DefaultMaxRequest - 3)}, "request of 65537 bytes exceeds the 64 KiB limit of " + sigilv1.PolicyService_Read_FullMethodName},
		{"health check", healthpb.Health_Check_FullMethodName, &healthpb.HealthCheckRequest{Service: pad(2000)}, "exceeds the 1 KiB limit"},
		{"declared limit", sigilv1.TransitService_Encrypt_FullMethodName, &sigilv1.TransitBatchRequest{Mount: pad(1 << 20)}, ""},
		{"not a message", sigilv1.PolicyService_Read_FullMethodName, pad(1 << 20), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := table.CheckSize(tt.method, tt.req)
			if tt.wantMsg == "" && err != nil || tt.wantMsg != "" && (errs.KindOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Errorf("CheckSize = %v, want %q", err, tt.wantMsg)
			}
		})
	}
}
