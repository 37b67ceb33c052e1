package server_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// FuzzSignRequest sends arbitrary wire bytes, decoded as a SignRequest, to
// a real server: whatever arrives, the answer is a clear client error or a
// certificate, never an internal error or a crash.
func FuzzSignRequest(f *testing.F) {
	s := testharness.StartSigil(f, testharness.SigilOptions{})
	client := sigilv1.NewCAServiceClient(s.Conn)
	good, _ := proto.Marshal(&sigilv1.SignRequest{Csr: csrFor(f, &x509.CertificateRequest{DNSNames: []string{"f.example.test"}}), Profile: "server"})
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x03, 0x30, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, wire []byte) {
		var req sigilv1.SignRequest
		if err := proto.Unmarshal(wire, &req); err != nil {
			return // the gRPC codec would refuse it before any handler runs
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.Sign(ctx, &req)
		switch status.Code(err) {
		case codes.OK, codes.InvalidArgument, codes.NotFound, codes.PermissionDenied:
		default:
			t.Fatalf("Sign(%x) = %v", wire, err)
		}
	})
}
