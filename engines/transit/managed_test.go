package transit_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/enginestest"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
)

type p11Managed struct{ p *hsm.PKCS11 }

func (m p11Managed) AEAD(ctx context.Context, name string, create bool) (engines.ManagedAEAD, error) {
	return m.p.SymmetricKey(ctx, name, create)
}

// Managed keys are generated in a SoftHSM token and every encryption runs
// there; the stored key record holds no key material.
func TestManagedKeys(t *testing.T) {
	ctx := context.Background()
	p11, err := hsm.OpenPKCS11(ctx, hsmtest.NewSoftHSMToken(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p11.Close() })
	st := enginestest.New(t, func(*barrier.Barrier) engines.Services { return engines.Services{Managed: p11Managed{p11}} }, transit.Register)
	e := st.Mount(t, "t", transit.Type).(*transit.Engine)

	if err := e.CreateKey(ctx, "hsm", transit.ChaCha20Poly1305, true); !errors.Is(err, engines.ErrInvalidRequest) {
		t.Fatalf("managed chacha20: %v", err)
	}
	if err := e.CreateKey(ctx, "hsm", transit.AES256GCM, true); err != nil {
		t.Fatal(err)
	}
	ct1 := enc(t, e, "hsm", []byte("in the token"), []byte("ad"))
	if _, err := e.RotateKey(ctx, "hsm"); err != nil {
		t.Fatal(err)
	}
	if got, err := dec(e, "hsm", ct1, []byte("ad")); err != nil || string(got) != "in the token" {
		t.Fatalf("decrypt after rotation: %q %v", got, err)
	}
	rw, err := e.Rewrap(ctx, "hsm", []transit.Item{{Ciphertext: ct1, AssociatedData: []byte("ad")}})
	if err != nil || rw[0].Err != nil || !strings.HasPrefix(rw[0].Ciphertext, "sigil:v2:") {
		t.Fatalf("rewrap: %+v %v", rw, err)
	}
	if _, err := dec(e, "hsm", ct1, []byte("other")); !errors.Is(err, transit.ErrInvalidCiphertext) {
		t.Fatalf("wrong AAD in the HSM: %v", err)
	}
	info, err := e.ReadKey(ctx, "hsm")
	if err != nil || !info.Managed || info.Latest != 2 {
		t.Fatalf("read: %+v %v", info, err)
	}

	// A server without an HSM refuses managed keys clearly.
	soft := newEngine(t, "s")[0]
	if err := soft.CreateKey(ctx, "k", transit.AES256GCM, true); !errors.Is(err, engines.ErrInvalidRequest) || !strings.Contains(err.Error(), "HSM") {
		t.Fatalf("managed key without an HSM: %v", err)
	}
}
