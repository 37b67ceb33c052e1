package ca

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"math/big"
	"testing"
)

// smallKey returns the public key d·G (or -d·G), computed by crypto/ecdh
// so the test does not trust the arithmetic under test.
func smallKey(t *testing.T, c elliptic.Curve, d int64, negate bool) *ecdsa.PublicKey {
	t.Helper()
	params := c.Params()
	k := big.NewInt(d)
	if negate {
		k.Sub(params.N, k)
	}
	var curve ecdh.Curve
	switch c {
	case elliptic.P256():
		curve = ecdh.P256()
	case elliptic.P384():
		curve = ecdh.P384()
	case elliptic.P521():
		curve = ecdh.P521()
	}
	priv, err := curve.NewPrivateKey(k.FillBytes(make([]byte, (params.BitSize+7)/8)))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(c, priv.PublicKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestSmallPrivateKey(t *testing.T) {
	k := newKeyChecker()
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		for _, d := range []int64{1, 2, 255, 4096, 4097, 8191, 8192, 8193, 12288, 30001, 65535, 65536, 69631, 69632} {
			for _, neg := range []bool{false, true} {
				if err := k.check(smallKey(t, c, d, neg)); err == nil {
					t.Errorf("%s d=%d neg=%v: small key accepted", c.Params().Name, d, neg)
				}
			}
		}
		if err := k.check(&mustKey(t, c).(*ecdsa.PrivateKey).PublicKey); err != nil {
			t.Errorf("%s random key rejected: %v", c.Params().Name, err)
		}
	}
}

func BenchmarkSmallKeyCheck(b *testing.B) {
	k := newKeyChecker()
	pub := &mustKey(b, elliptic.P256()).(*ecdsa.PrivateKey).PublicKey
	k.search(pub) // build the table
	b.ResetTimer()
	for b.Loop() {
		if err := k.search(pub); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCompromisedKeyRefused(t *testing.T) {
	// The first compromised eMudhra key, rebuilt from zlint's coordinates.
	x, _ := new(big.Int).SetString(compromisedEmudhraX()[0], 16)
	y, _ := new(big.Int).SetString("36ffd05d97a813c5aa0c6c9530e79cf5f0866468f13806420aa5c851840b1e252540e790e4b654c3852ed64af1e8657d", 16)
	raw := append([]byte{4}, append(x.FillBytes(make([]byte, 48)), y.FillBytes(make([]byte, 48))...)...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkNotCompromised(pub); err == nil {
		t.Fatal("compromised key accepted")
	}
	if err := checkNotCompromised(&mustKey(t, elliptic.P384()).(*ecdsa.PrivateKey).PublicKey); err != nil {
		t.Fatal(err)
	}
}
