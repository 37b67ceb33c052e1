package transit_test

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/storage/sqlite"
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
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	bar := barrier.New(adapt.Keyring(st.Keyring()))
	mk := make([]byte, barrier.MasterKeySize)
	_, _ = rand.Read(mk)
	if err := bar.Unseal(ctx, mk); err != nil {
		t.Fatal(err)
	}
	reg := engines.NewRegistry()
	if err := transit.Register(reg); err != nil {
		t.Fatal(err)
	}
	mounts := engines.NewMounts(st, bar, reg, engines.Services{Managed: p11Managed{p11}}, nil)
	if err := mounts.Enable(ctx, "t", transit.Type); err != nil {
		t.Fatal(err)
	}
	eng, _ := mounts.Engine(ctx, "t")
	e := eng.(*transit.Engine)

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
