package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/sigil-ca/sigil/authz/authztest"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/server"
)

// TestAuthzTableCoversEveryMethod: every method the real server registers
// has an authorization table entry, and the table names no method the
// server does not serve.
func TestAuthzTableCoversEveryMethod(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	registered := server.RegisteredMethods(s.Server)
	if len(registered) < 60 {
		t.Fatalf("only %d registered methods: GetServiceInfo is not what the test thinks", len(registered))
	}
	for _, m := range registered {
		if _, ok := server.AuthzFor(s.Server, m); !ok {
			t.Errorf("method %s has no authorization table entry", m)
		}
	}
	for _, m := range server.AuthzMethods(s.Server) {
		if !slices.Contains(registered, m) {
			t.Errorf("table entry %s names no registered method", m)
		}
	}
}

// authzToken writes a policy with doc and returns a token holding only it.
func authzToken(t *testing.T, ctx context.Context, s *testharness.Sigil, name, doc string) string {
	t.Helper()
	if _, err := sigilv1.NewPolicyServiceClient(s.Conn).Write(ctx, &sigilv1.WritePolicyRequest{Name: name, Document: []byte(doc)}); err != nil {
		t.Fatalf("write policy %s: %v", name, err)
	}
	priv, rcpt, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := sigilv1.NewTokenServiceClient(s.Conn).Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{name},
		Recipient: &sigilv1.Recipient{Kem: uint32(rcpt.KEM), PublicKey: rcpt.PublicKey}})
	if err != nil {
		t.Fatalf("create token with %s: %v", name, err)
	}
	var env envelope.Envelope
	if err := env.UnmarshalBinary(resp.GetEnvelope()); err != nil {
		t.Fatal(err)
	}
	data, err := envelope.OpenData(priv, &env, resp.GetInfo().GetId())
	if err != nil {
		t.Fatal(err)
	}
	return data["token"]
}

func authzConn(t *testing.T, s *testharness.Sigil, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.Server.GRPCAddr(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: s.RootPool, MinVersion: tls.VersionTLS12})),
		grpc.WithPerRPCCredentials(testharness.BearerToken(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// authzInvoke calls m with req, as a server stream read to its end where m
// streams (a unary Invoke would fail with a cardinality violation).
func authzInvoke(ctx context.Context, conn *grpc.ClientConn, m string, req proto.Message) error {
	if !authztest.ServerStreaming(m) {
		return conn.Invoke(ctx, m, req, &emptypb.Empty{})
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, m)
	if err != nil {
		return err
	}
	if err := st.SendMsg(req); err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	for {
		if err := st.RecvMsg(&emptypb.Empty{}); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// grant is a policy granting caps on path; a sys path needs sudo too.
func grant(path string, caps ...string) string {
	if strings.HasPrefix(path, "sys/") {
		caps = append(caps, "sudo")
	}
	return fmt.Sprintf("rules:\n  - path: %q\n    capabilities: [%s]\n", path, strings.Join(caps, ", "))
}

// namesAlsoChecked are the methods whose use case checks, past the table's
// path, the names the request would obtain (core.Caller.NamesAllowed): their
// narrow grant also allows the sample request's names.
var namesAlsoChecked = map[string]string{
	// The sample enrolls spiffe://sigil.test/authz.
	sigilv1.IdentityService_CreateJoinToken_FullMethodName: "names:\n  uris: [\"spiffe://sigil.test/authz\"]\n",
}

// TestAuthzNarrowGrants checks every path entry of the table against a
// real server: a token granted exactly (path, capability) gets past
// authorisation; one granted the same path with every other capability,
// and one granted nothing relevant, are refused with PermissionDenied
// before the handler runs.
func TestAuthzNarrowGrants(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	samples := authztest.Samples()
	methods := server.RegisteredMethods(s.Server)
	// Seal last: it succeeds, and the server is sealed afterwards.
	slices.SortFunc(methods, func(a, b string) int {
		if c := cmpBool(a == sigilv1.SysService_Seal_FullMethodName, b == sigilv1.SysService_Seal_FullMethodName); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	nothing := authzConn(t, s, authzToken(t, ctx, s, "authz-nothing", grant("authz/unrelated", "read")))
	all := []string{"read", "create", "update", "delete", "list"}
	n := 0
	for i, m := range methods {
		e, _ := server.AuthzFor(s.Server, m)
		if e.Kind != "path" {
			continue
		}
		n++
		t.Run(m, func(t *testing.T) {
			req, ok := samples[m]
			if !ok {
				t.Fatalf("no sample request for %s: add one to authztest.Samples", m)
			}
			path, err := e.Path(req)
			if err != nil {
				t.Fatalf("path of the sample request: %v", err)
			}
			others := slices.DeleteFunc(slices.Clone(all), func(c string) bool { return c == e.Capability })
			rightDoc := grant(path, e.Capability)
			if extra, ok := namesAlsoChecked[m]; ok {
				rightDoc += extra
			}
			right := authzConn(t, s, authzToken(t, ctx, s, fmt.Sprintf("authz-right-%d", i), rightDoc))
			wrong := authzConn(t, s, authzToken(t, ctx, s, fmt.Sprintf("authz-wrong-%d", i), grant(path, others...)))
			for _, c := range []struct {
				name string
				conn *grpc.ClientConn
			}{{"no grant", nothing}, {"other capabilities", wrong}} {
				err := authzInvoke(ctx, c.conn, m, req)
				if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), path) {
					t.Errorf("%s: %v, want PermissionDenied naming %s", c.name, err, path)
				}
			}
			err = authzInvoke(ctx, right, m, req)
			if code := status.Code(err); code == codes.PermissionDenied || code == codes.Unauthenticated || code == codes.Internal {
				t.Errorf("granted %s on %s: %v, want past authorisation", e.Capability, path, err)
			}
		})
	}
	if n < 50 {
		t.Fatalf("only %d path entries checked", n)
	}
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// TestAuthzBadPathComponents: invalid mount, role, key and policy names
// are refused by the table's path functions with InvalidArgument, before
// any grant is consulted (the root token would pass every grant).
func TestAuthzBadPathComponents(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		method string
		req    proto.Message
	}{
		{sigilv1.EngineService_Creds_FullMethodName, &sigilv1.CredsRequest{Mount: "../x", Role: "r"}},
		{sigilv1.EngineService_Creds_FullMethodName, &sigilv1.CredsRequest{Mount: "db", Role: "a/b"}},
		{sigilv1.EngineService_WriteRole_FullMethodName, &sigilv1.WriteRoleRequest{Mount: "db", Role: "*"}},
		{sigilv1.EngineService_Enable_FullMethodName, &sigilv1.EnableEngineRequest{Mount: "", Type: "postgres"}},
		{sigilv1.SSHService_Sign_FullMethodName, &sigilv1.SSHSignRequest{Mount: "ssh", Role: ""}},
		{sigilv1.TransitService_Encrypt_FullMethodName, &sigilv1.TransitBatchRequest{Mount: "transit", Name: "a/b"}},
		{sigilv1.PolicyService_Write_FullMethodName, &sigilv1.WritePolicyRequest{Name: "../root"}},
		{sigilv1.TokenService_Revoke_FullMethodName, &sigilv1.RevokeTokenRequest{Id: "a/b"}},
		{sigilv1.IdentityService_CreateJoinToken_FullMethodName, &sigilv1.CreateJoinTokenRequest{SpiffeId: "https://x"}},
		{sigilv1.AgentService_CreateEntry_FullMethodName, &sigilv1.CreateEntryRequest{SpiffeId: "https://x"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %v", tt.method, tt.req), func(t *testing.T) {
			err := s.Conn.Invoke(ctx, tt.method, tt.req, &emptypb.Empty{})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("%v, want InvalidArgument", err)
			}
		})
	}
}

// TestAuthzHandlerEntries: methods whose entry says "handler decides"
// still refuse a caller without the grant, and record a decision when
// they allow (a token looking itself up).
func TestAuthzHandlerEntries(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := authzConn(t, s, authzToken(t, ctx, s, "authz-nothing", grant("authz/unrelated", "read")))
	tests := []struct {
		method string
		req    proto.Message
		code   codes.Code
	}{
		{sigilv1.TokenService_Lookup_FullMethodName, &sigilv1.LookupTokenRequest{}, codes.OK},
		{sigilv1.TokenService_Lookup_FullMethodName, &sigilv1.LookupTokenRequest{Id: "someone-else"}, codes.PermissionDenied},
		// Token renewal (h/renew): renewing itself is allowed by the handler
		// (this token was made without a max TTL, so it is refused as not
		// renewable, after authorization); another token needs a grant.
		{sigilv1.TokenService_Renew_FullMethodName, &sigilv1.RenewTokenRequest{}, codes.FailedPrecondition},
		{sigilv1.TokenService_Renew_FullMethodName, &sigilv1.RenewTokenRequest{Id: "someone-else"}, codes.PermissionDenied},
		{sigilv1.LeaseService_Lookup_FullMethodName, &sigilv1.LookupLeaseRequest{Id: "db/r/x"}, codes.PermissionDenied},
		{sigilv1.LeaseService_Renew_FullMethodName, &sigilv1.RenewLeaseRequest{Id: "db/r/x"}, codes.PermissionDenied},
		{sigilv1.LeaseService_Revoke_FullMethodName, &sigilv1.RevokeLeaseRequest{Id: "db/r/x"}, codes.PermissionDenied},
		{sigilv1.LeaseService_Revoke_FullMethodName, &sigilv1.RevokeLeaseRequest{Prefix: "db"}, codes.PermissionDenied},
		{sigilv1.LeaseService_Revoke_FullMethodName, &sigilv1.RevokeLeaseRequest{Id: "db/r/x", Force: true}, codes.PermissionDenied},
		// Agent calls are node-scoped: a token is no node, whatever its grants.
		{sigilv1.AgentService_FetchEntries_FullMethodName, &sigilv1.FetchEntriesRequest{}, codes.PermissionDenied},
		{sigilv1.AgentService_MintX509SVID_FullMethodName, &sigilv1.MintX509SVIDRequest{EntryId: "000000000000000000000000"}, codes.PermissionDenied},
		{sigilv1.AgentService_MintJWTSVID_FullMethodName, &sigilv1.MintJWTSVIDRequest{EntryId: "000000000000000000000000", Audience: []string{"a"}}, codes.PermissionDenied},
		{sigilv1.AgentService_DeleteEntry_FullMethodName, &sigilv1.DeleteEntryRequest{Id: "000000000000000000000000"}, codes.PermissionDenied},
		{sigilv1.TokensService_Introspect_FullMethodName, &sigilv1.IntrospectRequest{Token: "not-a-token"}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %v", tt.method, tt.req), func(t *testing.T) {
			if e, _ := server.AuthzFor(s.Server, tt.method); e.Kind != "handler" {
				t.Fatalf("entry kind %q, want handler", e.Kind)
			}
			err := conn.Invoke(ctx, tt.method, tt.req, &emptypb.Empty{})
			if status.Code(err) != tt.code {
				t.Fatalf("%v, want %v", err, tt.code)
			}
		})
	}
}

// TestAuthzNoGrantMethods pins the methods that need no grant: a table
// change that makes another method public or open to any authenticated
// caller fails here until this list is changed on purpose too.
func TestAuthzNoGrantMethods(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	want := map[string]string{
		sigilv1.SysService_Status_FullMethodName:      "public",
		sigilv1.SysService_Init_FullMethodName:        "public",
		sigilv1.SysService_Unseal_FullMethodName:      "public",
		sigilv1.IdentityService_Enroll_FullMethodName: "public",
		sigilv1.WrapService_Unwrap_FullMethodName:     "public",
		// Logins carry their credential (issue 17).
		sigilv1.AuthMethodService_Login_FullMethodName:    "public",
		sigilv1.AuthMethodService_Callback_FullMethodName: "public",
		sigilv1.AuthMethodService_AuthURL_FullMethodName:  "public",
		sigilv1.CAService_GetRoot_FullMethodName:          "any-authenticated",
		sigilv1.CAService_GetChain_FullMethodName:         "any-authenticated",
		sigilv1.CAService_GetCRL_FullMethodName:           "any-authenticated",
		sigilv1.CAService_ListIssuers_FullMethodName:      "any-authenticated",
		sigilv1.TokenService_Lookup_FullMethodName:        "handler",
		sigilv1.TokenService_Renew_FullMethodName:         "handler", // h/renew: renew-self
		sigilv1.LeaseService_Lookup_FullMethodName:        "handler",
		sigilv1.LeaseService_Renew_FullMethodName:         "handler",
		sigilv1.LeaseService_Revoke_FullMethodName:        "handler",
		sigilv1.TokensService_Introspect_FullMethodName:   "handler",
		// A workload renews its own SVID without a grant (core.Sign).
		sigilv1.CAService_Sign_FullMethodName: "handler",
		// Node agents: node-scoped in core; the bundle is public.
		sigilv1.AgentService_DeleteEntry_FullMethodName:  "handler",
		sigilv1.AgentService_FetchEntries_FullMethodName: "handler",
		sigilv1.AgentService_MintX509SVID_FullMethodName: "handler",
		sigilv1.AgentService_MintJWTSVID_FullMethodName:  "handler",
		sigilv1.AgentService_GetBundle_FullMethodName:    "any-authenticated",
	}
	for _, m := range server.RegisteredMethods(s.Server) {
		e, _ := server.AuthzFor(s.Server, m)
		infra := strings.HasPrefix(m, "/grpc.health.") || strings.HasPrefix(m, "/grpc.reflection.")
		switch {
		case infra && e.Kind != "public":
			t.Errorf("%s: %s, want public", m, e.Kind)
		case !infra && e.Kind != "path" && want[m] != e.Kind:
			t.Errorf("%s: %s, not in the list of methods without a path grant", m, e.Kind)
		case !infra && want[m] != "" && want[m] != e.Kind:
			t.Errorf("%s: %s, want %s", m, e.Kind, want[m])
		}
	}
}

// TestAuthzKVDeleteVersions: deleting given versions needs update on
// MOUNT/delete/PATH (as in Vault); delete on MOUNT/data/PATH, which covers
// only the latest version, does not reach it, and the reverse holds too.
func TestAuthzKVDeleteVersions(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	versions := authzConn(t, s, authzToken(t, ctx, s, "kvdel-versions", grant("kvd/delete/a/b", "update")))
	latest := authzConn(t, s, authzToken(t, ctx, s, "kvdel-latest", grant("kvd/data/a/b", "delete")))
	byVersion := &sigilv1.KVVersionsRequest{Mount: "kvd", Path: "a/b", Versions: []int64{1}}
	byLatest := &sigilv1.KVVersionsRequest{Mount: "kvd", Path: "a/b"}
	for _, tc := range []struct {
		name    string
		conn    *grpc.ClientConn
		req     *sigilv1.KVVersionsRequest
		refused bool
	}{
		{"versions with update on delete/", versions, byVersion, false},
		{"latest with update on delete/", versions, byLatest, true},
		{"latest with delete on data/", latest, byLatest, false},
		{"versions with delete on data/", latest, byVersion, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sigilv1.NewKVServiceClient(tc.conn).Delete(ctx, tc.req)
			if denied := status.Code(err) == codes.PermissionDenied; denied != tc.refused {
				t.Errorf("%v; want refused=%v", err, tc.refused)
			}
		})
	}
}
