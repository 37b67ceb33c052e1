package server_test

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestSignAuditedOnce: a successful Sign is audited exactly once (its
// record commits with the certificate, and the interceptor does not write
// a second), a failing Sign is still audited by the interceptor, and the
// chain verifies after concurrent signs.
func TestSignAuditedOnce(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := sigilv1.NewCAServiceClient(s.Conn)
	auditor := sigilv1.NewAuditServiceClient(s.Conn)
	before, err := auditor.Verify(ctx, &sigilv1.VerifyAuditRequest{})
	if err != nil || !before.GetOk() {
		t.Fatalf("Verify = %v, %v", before, err)
	}
	const signs = 16
	var wg sync.WaitGroup
	errc := make(chan error, signs)
	for range signs {
		wg.Go(func() {
			_, err := client.Sign(ctx, &sigilv1.SignRequest{Csr: csrFor(t, &x509.CertificateRequest{DNSNames: []string{"once.example.test"}})})
			errc <- err
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.Sign(ctx, &sigilv1.SignRequest{Csr: []byte("not a csr")}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Sign with a garbage CSR: %v", err)
	}
	after, err := auditor.Verify(ctx, &sigilv1.VerifyAuditRequest{})
	if err != nil || !after.GetOk() {
		t.Fatalf("Verify = %v, %v", after, err)
	}
	// The first Verify's own record, one per sign, one for the failure.
	if want := before.GetRecords() + 1 + signs + 1; after.GetRecords() != want {
		t.Fatalf("audit log grew from %d to %d records, want %d", before.GetRecords(), after.GetRecords(), want)
	}
}
