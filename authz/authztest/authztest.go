// Package authztest holds what the tests of the authorization table
// (package authz) and of the server that enforces it share: a sample
// request for every path entry, and how the tests name rule kinds.
package authztest

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// Samples is a request for every method whose table entry is a path:
// each passes the path function, and fails (if at all) in the handler with
// something other than PermissionDenied, without lasting side effects
// except where noted.
func Samples() map[string]proto.Message {
	const m, r, k = "authz-m", "authz-r", "authz-k"
	tk := &sigilv1.TransitKeyRequest{Mount: m, Name: k}
	batch := &sigilv1.TransitBatchRequest{Mount: m, Name: k}
	sign := &sigilv1.TransitSignRequest{Mount: m, Name: k}
	verify := &sigilv1.TransitVerifyRequest{Mount: m, Name: k}
	return map[string]proto.Message{
		sigilv1.SysService_Seal_FullMethodName:      &sigilv1.SealRequest{}, // seals: run last
		sigilv1.SysService_RotateKey_FullMethodName: &sigilv1.RotateKeyRequest{},
		sigilv1.SysService_Rewrap_FullMethodName:    &sigilv1.RewrapRequest{},

		sigilv1.CAService_SignIntermediate_FullMethodName:      &sigilv1.SignIntermediateRequest{},
		sigilv1.CAService_Revoke_FullMethodName:                &sigilv1.RevokeRequest{Serial: "00"},
		sigilv1.CAService_RevokeIssuer_FullMethodName:          &sigilv1.RevokeIssuerRequest{},
		sigilv1.CAService_ListCertificates_FullMethodName:      &sigilv1.ListCertificatesRequest{},
		sigilv1.CAService_Init_FullMethodName:                  &sigilv1.CAInitRequest{KeyType: "no-such-type"},
		sigilv1.CAService_CreateIntermediateCSR_FullMethodName: &sigilv1.CAInitRequest{KeyType: "no-such-type"},
		sigilv1.CAService_ImportIntermediate_FullMethodName:    &sigilv1.ImportIntermediateRequest{},
		sigilv1.CAService_RotateIntermediate_FullMethodName:    &sigilv1.RotateIntermediateRequest{},

		sigilv1.PolicyService_Write_FullMethodName:  &sigilv1.WritePolicyRequest{Name: "authz-p", Document: []byte("not: [a policy")},
		sigilv1.PolicyService_Read_FullMethodName:   &sigilv1.ReadPolicyRequest{Name: "authz-p"},
		sigilv1.PolicyService_Delete_FullMethodName: &sigilv1.DeletePolicyRequest{Name: "authz-p"},
		sigilv1.PolicyService_List_FullMethodName:   &sigilv1.ListPoliciesRequest{},
		sigilv1.PolicyService_Test_FullMethodName:   &sigilv1.TestPolicyRequest{},

		sigilv1.TokenService_Create_FullMethodName: &sigilv1.CreateTokenRequest{},
		sigilv1.TokenService_Revoke_FullMethodName: &sigilv1.RevokeTokenRequest{Id: "authz-none"},

		sigilv1.AuditService_Verify_FullMethodName: &sigilv1.VerifyAuditRequest{},
		// Cluster (issue 18).
		sigilv1.ClusterService_Members_FullMethodName: &sigilv1.MembersRequest{},
		sigilv1.AuditService_Hash_FullMethodName:      &sigilv1.HashAuditRequest{Value: "x"},

		sigilv1.ACMEService_CreateEAB_FullMethodName:         &sigilv1.CreateEABRequest{},
		sigilv1.ACMEService_ListEAB_FullMethodName:           &sigilv1.ListEABRequest{},
		sigilv1.ACMEService_RevokeEAB_FullMethodName:         &sigilv1.RevokeEABRequest{KeyId: "authz-none"},
		sigilv1.ACMEService_ListAccounts_FullMethodName:      &sigilv1.ListACMEAccountsRequest{},
		sigilv1.ACMEService_DeactivateAccount_FullMethodName: &sigilv1.DeactivateACMEAccountRequest{Id: "authz-none"},

		sigilv1.EngineService_Enable_FullMethodName:     &sigilv1.EnableEngineRequest{Mount: m, Type: "no-such-type"},
		sigilv1.EngineService_List_FullMethodName:       &sigilv1.ListEnginesRequest{},
		sigilv1.EngineService_Disable_FullMethodName:    &sigilv1.DisableEngineRequest{Mount: m},
		sigilv1.EngineService_Configure_FullMethodName:  &sigilv1.ConfigureEngineRequest{Mount: m},
		sigilv1.EngineService_RotateRoot_FullMethodName: &sigilv1.RotateRootRequest{Mount: m},
		sigilv1.EngineService_WriteRole_FullMethodName:  &sigilv1.WriteRoleRequest{Mount: m, Role: r},
		sigilv1.EngineService_ReadRole_FullMethodName:   &sigilv1.ReadRoleRequest{Mount: m, Role: r},
		sigilv1.EngineService_DeleteRole_FullMethodName: &sigilv1.DeleteRoleRequest{Mount: m, Role: r},
		sigilv1.EngineService_ListRoles_FullMethodName:  &sigilv1.ListRolesRequest{Mount: m},
		sigilv1.EngineService_Creds_FullMethodName:      &sigilv1.CredsRequest{Mount: m, Role: r},

		sigilv1.LeaseService_List_FullMethodName:               &sigilv1.ListLeasesRequest{},
		sigilv1.IdentityService_CreateJoinToken_FullMethodName: &sigilv1.CreateJoinTokenRequest{SpiffeId: "spiffe://sigil.test/authz"},
		// Agent: a sample entry whose selector fails validation (no side effect).
		sigilv1.AgentService_CreateEntry_FullMethodName:  &sigilv1.CreateEntryRequest{ParentId: "spiffe://sigil.test/authz-node", SpiffeId: "spiffe://sigil.test/authz", Selectors: []string{"unix:bogus:1"}},
		sigilv1.AgentService_ListEntries_FullMethodName:  &sigilv1.ListEntriesRequest{},
		sigilv1.AgentService_RotateJWTKey_FullMethodName: &sigilv1.RotateJWTKeyRequest{},
		sigilv1.SSHService_Sign_FullMethodName:           &sigilv1.SSHSignRequest{Mount: m, Role: r},

		sigilv1.TransitService_CreateKey_FullMethodName:    tk,
		sigilv1.TransitService_RotateKey_FullMethodName:    tk,
		sigilv1.TransitService_ConfigureKey_FullMethodName: &sigilv1.ConfigureTransitKeyRequest{Mount: m, Name: k},
		sigilv1.TransitService_ReadKey_FullMethodName:      tk,
		sigilv1.TransitService_DeleteKey_FullMethodName:    tk,
		sigilv1.TransitService_ListKeys_FullMethodName:     &sigilv1.ListTransitKeysRequest{Mount: m},
		sigilv1.TransitService_Encrypt_FullMethodName:      batch,
		sigilv1.TransitService_Decrypt_FullMethodName:      batch,
		sigilv1.TransitService_Rewrap_FullMethodName:       batch,
		sigilv1.TransitService_DataKey_FullMethodName:      &sigilv1.DataKeyRequest{Mount: m, Name: k},
		sigilv1.TransitService_Sign_FullMethodName:         sign,
		sigilv1.TransitService_Verify_FullMethodName:       verify,
		sigilv1.TransitService_HMAC_FullMethodName:         sign,
		sigilv1.TransitService_VerifyHMAC_FullMethodName:   verify,

		sigilv1.KVService_Put_FullMethodName:            &sigilv1.KVWriteRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_Patch_FullMethodName:          &sigilv1.KVWriteRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_Get_FullMethodName:            &sigilv1.KVGetRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_Rollback_FullMethodName:       &sigilv1.KVRollbackRequest{Mount: m, Path: "a/b", Version: 1},
		sigilv1.KVService_Delete_FullMethodName:         &sigilv1.KVVersionsRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_Undelete_FullMethodName:       &sigilv1.KVVersionsRequest{Mount: m, Path: "a/b", Versions: []int64{1}},
		sigilv1.KVService_Destroy_FullMethodName:        &sigilv1.KVVersionsRequest{Mount: m, Path: "a/b", Versions: []int64{1}},
		sigilv1.KVService_ReadMetadata_FullMethodName:   &sigilv1.KVPathRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_WriteMetadata_FullMethodName:  &sigilv1.KVWriteMetadataRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_DeleteMetadata_FullMethodName: &sigilv1.KVPathRequest{Mount: m, Path: "a/b"},
		sigilv1.KVService_List_FullMethodName:           &sigilv1.KVListRequest{Mount: m, Prefix: "a/"},

		// Auth methods (issue 17): an unknown type, or a mount that does
		// not exist, fails in the handler.
		sigilv1.AuthMethodService_Enable_FullMethodName:     &sigilv1.EnableAuthRequest{Mount: m, Type: "no-such-type"},
		sigilv1.AuthMethodService_List_FullMethodName:       &sigilv1.ListAuthRequest{},
		sigilv1.AuthMethodService_Disable_FullMethodName:    &sigilv1.DisableAuthRequest{Mount: m},
		sigilv1.AuthMethodService_Configure_FullMethodName:  &sigilv1.ConfigureAuthRequest{Mount: m},
		sigilv1.AuthMethodService_WriteRole_FullMethodName:  &sigilv1.WriteAuthRoleRequest{Mount: m, Role: r},
		sigilv1.AuthMethodService_ReadRole_FullMethodName:   &sigilv1.ReadAuthRoleRequest{Mount: m, Role: r},
		sigilv1.AuthMethodService_DeleteRole_FullMethodName: &sigilv1.DeleteAuthRoleRequest{Mount: m, Role: r},
		sigilv1.AuthMethodService_ListRoles_FullMethodName:  &sigilv1.ListAuthRolesRequest{Mount: m},
		sigilv1.AuthMethodService_WriteGroup_FullMethodName: &sigilv1.WriteAuthGroupRequest{Mount: m, Group: "g"},
		// Snapshots (deploy): server-streaming (ServerStreaming).
		sigilv1.SnapshotService_Save_FullMethodName: &sigilv1.SnapshotSaveRequest{},
	}
}

// ServerStreaming reports whether method streams its responses (a unary
// call to it fails with a cardinality violation; it has no request for a
// path to be computed from).
func ServerStreaming(method string) bool {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")))
	m, ok := d.(protoreflect.MethodDescriptor)
	return err == nil && ok && m.IsStreamingServer()
}

// KindName is a rule kind as the tests name it: public, any-authenticated,
// path, handler ("unknown" for none).
func KindName(k sigilv1.Access_Kind) string {
	if k == sigilv1.Access_KIND_UNSPECIFIED {
		return "unknown"
	}
	return strings.ReplaceAll(strings.ToLower(k.String()), "_", "-")
}
