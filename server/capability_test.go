package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestWrongMountIsNamed: an operation sent to a mount whose engine cannot
// do it is bad input, refused with a message that names the mount, its
// engine type and what the operation needs; the server never reaches for
// a concrete engine type.
func TestWrongMountIsNamed(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eng := sigilv1.NewEngineServiceClient(s.Conn)
	for _, m := range []struct{ typ, mount string }{{"transit", "tr"}, {"tokens", "tok"}, {"keys", "k"}} {
		if _, err := eng.Enable(ctx, &sigilv1.EnableEngineRequest{Type: m.typ, Mount: m.mount}); err != nil {
			t.Fatalf("enable %s: %v", m.typ, err)
		}
	}
	if _, err := eng.WriteRole(ctx, &sigilv1.WriteRoleRequest{Mount: "k", Role: "r", Fields: map[string]string{"key_type": "ed25519"}}); err != nil {
		t.Fatalf("keys role: %v", err)
	}
	transit := sigilv1.NewTransitServiceClient(s.Conn)
	tests := []struct {
		name string
		call func() error
		msg  string
	}{
		{"encrypt on a tokens mount", func() error {
			_, err := transit.Encrypt(ctx, &sigilv1.TransitBatchRequest{Mount: "tok", Name: "key",
				Items: []*sigilv1.TransitItem{{Plaintext: []byte("x")}}})
			return err
		}, "mount tok is a tokens engine; transit operations need a transit mount"},
		{"list keys on a keys mount", func() error {
			_, err := transit.ListKeys(ctx, &sigilv1.ListTransitKeysRequest{Mount: "k"})
			return err
		}, "mount k is a keys engine; transit operations need a transit mount"},
		{"ssh sign on a transit mount", func() error {
			_, err := sigilv1.NewSSHServiceClient(s.Conn).Sign(ctx, &sigilv1.SSHSignRequest{Mount: "tr", Role: "r", PublicKey: []byte("ssh-ed25519 AAAA")})
			return err
		}, "mount tr is a transit engine; ssh signing needs a keys mount"},
		{"role on a transit mount", func() error {
			_, err := eng.WriteRole(ctx, &sigilv1.WriteRoleRequest{Mount: "tr", Role: "r"})
			return err
		}, "mount tr is a transit engine; it has no roles"},
		{"creds from a transit mount", func() error {
			_, err := eng.Creds(ctx, &sigilv1.CredsRequest{Mount: "tr", Role: "r", WrapTtlSeconds: 60})
			return err
		}, "mount tr is a transit engine; it mints no leased secrets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("err = %v, want InvalidArgument saying %q", err, tt.msg)
			}
		})
	}
}
