package ca

import (
	"context"
	"crypto/elliptic"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/hsm"
)

// TestServerProfileKeepsCommonNameFromSAN: a server certificate keeps the
// requested common name when it is one of its DNS SANs (in the SAN's
// form), and has an empty subject otherwise; the result lints clean.
func TestServerProfileKeepsCommonNameFromSAN(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	long := strings.Repeat("a", 60) + ".example.test"
	tests := []struct {
		name, cn string
		dns, ips []string
		wantCN   string
	}{
		{"CN is a SAN", "app.example.test", []string{"app.example.test", "api.example.test"}, nil, "app.example.test"},
		{"CN in another case", "App.Example.TEST", []string{"app.example.test"}, nil, "app.example.test"},
		{"CN only in the subject is copied to the SANs and kept", "only.example.test", nil, nil, "only.example.test"},
		// Private IPs in the subject fail the reserved-IP lint: not kept.
		{"CN is an IP SAN", "10.1.2.3", nil, []string{"10.1.2.3"}, ""},
		{"no CN", "", []string{"app.example.test"}, nil, ""},
		{"CN longer than ub-common-name", long, []string{long}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := e.ca.Sign(ctx, SignRequest{CSR: csrFor(t, mustKey(t, elliptic.P256()), tc.cn, tc.dns, tc.ips, nil, nil), Profile: ProfileServer, Requester: "test"})
			if err != nil {
				t.Fatal(err)
			}
			if got := iss.Certificate.Subject.CommonName; got != tc.wantCN {
				t.Fatalf("subject CN %q, want %q", got, tc.wantCN)
			}
			if tc.wantCN != "" && len(iss.Certificate.Subject.Names) != 1 {
				t.Fatalf("subject %v carries more than the CN", iss.Certificate.Subject)
			}
			assertLintClean(t, e.ca, tc.name, iss.DER)
		})
	}
}

// TestExternalRootCSRRefusedOnInitialisedCA: like InitHierarchy, a CSR for
// an external root is refused once the CA has its own root, and no key is
// created in custody.
func TestExternalRootCSRRefusedOnInitialisedCA(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	before, err := e.ca.custody.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.ca.CreateIntermediateCSR(ctx, InitRequest{CommonName: "Second"})
	if !errors.Is(err, ErrAlreadyInitialized) || KindOf(err) != KindConflict {
		t.Fatalf("CSR on an initialised CA: %v, want ErrAlreadyInitialized", err)
	}
	after, err := e.ca.custody.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("keys in custody %d → %d: the refused CSR left a key", len(before), len(after))
	}
	// A fresh CA still gets its CSR.
	f := newEnv(t, testConfig(), false)
	if _, err := f.ca.CreateIntermediateCSR(ctx, InitRequest{CommonName: "External Int", KeyType: hsm.ECDSAP256}); err != nil {
		t.Fatalf("CSR on a fresh CA: %v", err)
	}
}
