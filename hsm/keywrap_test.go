package hsm_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
)

func TestPKCS11KeyWrapper(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(t)
	c := openToken(t, tok)
	w, err := c.KeyWrapper(ctx, "master")
	if err != nil {
		t.Fatal(err)
	}
	mk := make([]byte, 32)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	wrapped, err := w.WrapMasterKey(ctx, mk)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, mk[:8]) {
		t.Fatal("wrapped key contains the key")
	}
	again, _ := w.WrapMasterKey(ctx, mk)
	if bytes.Equal(wrapped, again) {
		t.Error("two wraps are identical: IV not random")
	}

	// After a restart the same token key unwraps it.
	c.Close()
	c = openToken(t, tok)
	defer c.Close()
	w, err = c.KeyWrapper(ctx, "master")
	if err != nil {
		t.Fatal(err)
	}
	got, err := w.UnwrapMasterKey(ctx, wrapped)
	if err != nil || !bytes.Equal(got, mk) {
		t.Fatalf("UnwrapMasterKey = %x, %v", got, err)
	}

	other, err := c.KeyWrapper(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := bytes.Clone(wrapped); b[i] ^= 1; return b }
	tests := []struct {
		name    string
		w       hsm.KeyWrapper
		wrapped []byte
	}{
		{"another wrapping key", other, wrapped},
		{"IV", w, flip(1)},
		{"ciphertext", w, flip(20)},
		{"tag", w, flip(len(wrapped) - 1)},
		{"truncated", w, wrapped[:len(wrapped)-1]},
		{"format", w, flip(0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if k, err := tc.w.UnwrapMasterKey(ctx, tc.wrapped); !errors.Is(err, hsm.ErrBadWrappedKey) {
				t.Errorf("UnwrapMasterKey = %x, %v; want ErrBadWrappedKey", k, err)
			}
		})
	}

	// The wrapping key itself is sensitive and never extractable.
	p, sh, done := rawSession(t, tok)
	defer done()
	h := findOne(t, p, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "sigil-wrap.master"),
	})
	attrs, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	if attrs[0].Value[0] != 0 || attrs[1].Value[0] == 0 {
		t.Errorf("wrapping key extractable=%v sensitive=%v", attrs[0].Value, attrs[1].Value)
	}
	if _, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
		t.Error("wrapping key value readable")
	}
}
