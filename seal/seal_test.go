package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
)

func master(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSplitAndUnseal(t *testing.T) {
	tests := []struct {
		name    string
		n, k    int
		order   []int
		wantErr bool
	}{
		{name: "3 of 5", n: 5, k: 3, order: []int{4, 0, 2}},
		{name: "2 of 2", n: 2, k: 2, order: []int{1, 0}},
		{name: "1 of 1", n: 1, k: 1, order: []int{0}},
		{name: "threshold above shares", n: 2, k: 3, wantErr: true},
		{name: "zero threshold", n: 3, k: 0, wantErr: true},
		{name: "1 of 3 hands out the key", n: 3, k: 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := master(t)
			cfg, shares, err := Split(m, tt.n, tt.k)
			if tt.wantErr {
				if err == nil {
					t.Fatal("expected an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stored, err := cfg.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(stored, m) {
				t.Fatal("stored config contains the master key")
			}
			cfg2, err := ParseConfig(stored)
			if err != nil {
				t.Fatal(err)
			}
			p := NewProgress(cfg2)
			for i, idx := range tt.order {
				enc := EncodeShare(shares[idx])
				dec, err := DecodeShare(enc)
				if err != nil {
					t.Fatal(err)
				}
				got, err := p.Add(dec)
				if err != nil {
					t.Fatal(err)
				}
				if i < len(tt.order)-1 {
					if got != nil || p.Count() != i+1 {
						t.Fatalf("after %d shares: key %v count %d", i+1, got != nil, p.Count())
					}
					continue
				}
				if !bytes.Equal(got, m) {
					t.Fatal("reassembled key differs")
				}
			}
			if p.Count() != 0 {
				t.Error("progress not reset after unseal")
			}
		})
	}
}

func TestWrongShareKeepsProgress(t *testing.T) {
	m := master(t)
	cfg, shares, err := Split(m, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	_, otherShares, err := Split(master(t), 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	p := NewProgress(cfg)
	if _, err := p.Add(shares[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Add(otherShares[1]); !errors.Is(err, ErrWrongShare) {
		t.Fatalf("foreign share: err = %v", err)
	}
	tampered := append([]byte(nil), shares[1]...)
	tampered[0] ^= 1
	if _, err := p.Add(tampered); !errors.Is(err, ErrWrongShare) {
		t.Fatalf("tampered share: err = %v", err)
	}
	if _, err := p.Add(shares[0]); !errors.Is(err, ErrDuplicateShare) {
		t.Fatalf("duplicate share: err = %v", err)
	}
	if p.Count() != 1 {
		t.Fatalf("count = %d after rejected shares, want 1", p.Count())
	}
	if _, err := p.Add(shares[3]); err != nil {
		t.Fatal(err)
	}
	got, err := p.Add(shares[4])
	if err != nil || !bytes.Equal(got, m) {
		t.Fatalf("unseal after rejections: %v", err)
	}
}

func TestDecodeShareErrors(t *testing.T) {
	for _, in := range []string{"", "abc", sharePrefix + "!!!", sharePrefix, encSharePrefix + "xx"} {
		if _, err := DecodeShare(in); !errors.Is(err, ErrBadShare) {
			t.Errorf("DecodeShare(%q) err = %v", in, err)
		}
	}
}

func TestEncryptedShares(t *testing.T) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(priv.PublicKey())
	privDER, _ := x509.MarshalPKCS8PrivateKey(priv)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	privPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})

	to, err := ParseRecipient(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, shares, err := Split(master(t), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := EncryptShare(to, shares[0])
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains([]byte(enc), []byte(EncodeShare(shares[0]))) {
		t.Fatal("encrypted share contains the clear share")
	}
	got, err := DecryptShare(privPEM, enc)
	if err != nil {
		t.Fatal(err)
	}
	if got != EncodeShare(shares[0]) {
		t.Fatal("decrypted share differs")
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	otherDER, _ := x509.MarshalPKCS8PrivateKey(other)
	if _, err := DecryptShare(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherDER}), enc); err == nil {
		t.Fatal("another key decrypted the share")
	}
	if _, err := ParseRecipient([]byte("junk")); err == nil {
		t.Fatal("junk recipient accepted")
	}
}

// FuzzDecodeShare: shares are typed or pasted by operators and sent over
// the unauthenticated Unseal call, so the decoder must take anything.
func FuzzDecodeShare(f *testing.F) {
	f.Add(EncodeShare([]byte{1, 2, 3, 4}))
	f.Add(sharePrefix + "!!")
	f.Add(encSharePrefix + "AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeShare(s)
		if err != nil {
			if !errors.Is(err, ErrBadShare) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if len(b) < 2 {
			t.Fatalf("accepted a %d-byte share", len(b))
		}
	})
}
