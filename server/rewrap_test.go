package server_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/server"
)

// TestRewrapCoversServerKinds drives the calls that seal values in the
// server itself (wrapped responses, API-token leases, EAB keys), rotates
// the barrier key and rewraps: every value moves to the new key, and every
// kind the server sealed has a rewrapper.
func TestRewrapCoversServerKinds(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, r, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	rcpt := &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}
	// Token creation refuses policies that do not exist.
	if _, err := sigilv1.NewPolicyServiceClient(s.Conn).Write(ctx, &sigilv1.WritePolicyRequest{Name: "p",
		Document: []byte("rules:\n  - path: \"x\"\n    capabilities: [read]\n")}); err != nil {
		t.Fatal(err)
	}
	tokens := sigilv1.NewTokenServiceClient(s.Conn)
	if _, err := tokens.Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"p"}, WrapTtlSeconds: 600}); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"p"}, Recipient: rcpt}); err != nil {
		t.Fatal(err)
	}
	if _, err := sigilv1.NewACMEServiceClient(s.Conn).CreateEAB(ctx, &sigilv1.CreateEABRequest{Recipient: rcpt}); err != nil {
		t.Fatal(err)
	}

	sealed, unregistered := server.SealedKinds(s.Server)
	for _, k := range []string{"response-wrap", "lease-revocation", "acme-eab"} {
		if !slices.Contains(sealed, k) {
			t.Fatalf("the test sealed no %q value (sealed %v)", k, sealed)
		}
	}
	if len(unregistered) != 0 {
		t.Fatalf("kinds sealed without a rewrapper: %v", unregistered)
	}

	sys := sigilv1.NewSysServiceClient(s.Conn)
	if _, err := sys.RotateKey(ctx, &sigilv1.RotateKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	first, err := sys.Rewrap(ctx, &sigilv1.RewrapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := sys.Rewrap(ctx, &sigilv1.RewrapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetRewrapped() == 0 || second.GetRewrapped() != 0 ||
		second.GetAlreadyCurrent() != first.GetRewrapped()+first.GetAlreadyCurrent() {
		t.Fatalf("Rewrap = %v then %v; want everything rewrapped once, then all current", first, second)
	}
}
