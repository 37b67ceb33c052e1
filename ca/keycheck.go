package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"sync"
)

// keyChecker rejects ECDSA subject keys whose private scalar d is tiny
// (|d| <= 2^16): anyone can recover such a key from the public key. It is
// the check zlint's e_ecdsa_small_private_key performs, which costs ~16 ms
// per certificate there; here a baby-step/giant-step search over a table
// built once per curve (lazily, ~8200 point additions) costs one modular
// inversion and ~100 multiplications per key (~33 µs), and the verdict is
// cached per key because renewals reuse keys.
//
// A larger table needs fewer giant steps per key but moves its build cost
// into the first issuance of every Authority (16384 entries, measured with
// the earlier one-step-at-a-time search: +0.3–0.7 ms per certificate
// averaged over a 3 s BenchmarkSign, and the race-enabled ca tests 3×
// slower), so the table stays small.
type keyChecker struct {
	p256, p384, p521 curveTable

	mu      sync.Mutex
	verdict map[[32]byte]error // by SHA-256 of the SPKI
}

const (
	smallKeyBaby  = 4096 // table holds X(j·G) for 1 <= j <= smallKeyBaby
	smallKeyGiant = 8    // giant steps of 2·smallKeyBaby each way: |d| <= 8·8192+4096 > 2^16
	verdictCap    = 10000
)

type curveTable struct {
	once  sync.Once
	xs    map[string]int // big-endian X coordinate -> j
	giant []point        // i·2·smallKeyBaby·G for 1 <= i <= smallKeyGiant
}

func newKeyChecker() *keyChecker {
	return &keyChecker{verdict: map[[32]byte]error{}}
}

// check returns an error if pub is a trivially weak key.
func (k *keyChecker) check(pub crypto.PublicKey) error {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil
	}
	spki, err := x509.MarshalPKIXPublicKey(ec)
	if err != nil {
		return err
	}
	h := sha256.Sum256(spki)
	k.mu.Lock()
	v, seen := k.verdict[h]
	k.mu.Unlock()
	if seen {
		return v
	}
	v = k.search(ec)
	k.mu.Lock()
	if len(k.verdict) >= verdictCap {
		clear(k.verdict) // a cache, not a record: dropping it costs only time
	}
	k.verdict[h] = v
	k.mu.Unlock()
	return v
}

func (k *keyChecker) search(ec *ecdsa.PublicKey) error {
	var t *curveTable
	switch ec.Curve {
	case elliptic.P256():
		t = &k.p256
	case elliptic.P384():
		t = &k.p384
	case elliptic.P521():
		t = &k.p521
	default:
		return nil
	}
	params := ec.Curve.Params()
	t.once.Do(func() { t.build(params) })
	x, y, err := coordinates(ec)
	if err != nil {
		return err
	}
	if j, ok := t.xs[string(x.Bytes())]; ok {
		return fmt.Errorf("the ECDSA private key is ±%d: trivially recoverable", j)
	}
	// Q ± i·S for the giant steps S_i = i·step: both sums share the
	// denominator S_i.x - Q.x of the chord's slope, so one inversion of
	// all of them (Montgomery's trick) serves every sum, where adding the
	// steps one after the other cost an inversion per point.
	P := params.P
	dens := make([]*big.Int, len(t.giant))
	for i, g := range t.giant {
		dens[i] = new(big.Int).Sub(g.x, x)
		if dens[i].Mod(dens[i], P).Sign() == 0 {
			// Q = ±S_i: Q ∓ S_i is the identity, d = ±i·step exactly.
			return fmt.Errorf("the ECDSA private key is ±%d: trivially recoverable", (i+1)*2*smallKeyBaby)
		}
	}
	invs := batchInverse(dens, P)
	for i, g := range t.giant {
		for _, gy := range []*big.Int{g.y, new(big.Int).Sub(P, g.y)} { // Q + S_i, Q - S_i
			lambda := new(big.Int).Sub(gy, y)
			lambda.Mul(lambda, invs[i]).Mod(lambda, P)
			sx := lambda.Mul(lambda, lambda)
			sx.Sub(sx, x).Sub(sx, g.x).Mod(sx, P)
			if j, ok := t.xs[string(sx.Bytes())]; ok {
				return fmt.Errorf("the ECDSA private key is ±%d·G offset by %d giant steps: trivially recoverable", j, i+1)
			}
		}
	}
	return nil
}

// batchInverse returns the inverses mod p of xs (all non-zero mod p) with
// one modular inversion and 3(n-1) multiplications.
func batchInverse(xs []*big.Int, p *big.Int) []*big.Int {
	if len(xs) == 0 {
		return nil
	}
	prefix := make([]*big.Int, len(xs)) // prefix[i] = xs[0]·…·xs[i]
	acc := new(big.Int).Set(xs[0])
	prefix[0] = new(big.Int).Set(acc)
	for i := 1; i < len(xs); i++ {
		acc.Mul(acc, xs[i]).Mod(acc, p)
		prefix[i] = new(big.Int).Set(acc)
	}
	inv := new(big.Int).ModInverse(acc, p) // 1/(xs[0]·…·xs[n-1])
	out := make([]*big.Int, len(xs))
	for i := len(xs) - 1; i > 0; i-- {
		out[i] = new(big.Int).Mul(inv, prefix[i-1])
		out[i].Mod(out[i], p)
		inv.Mul(inv, xs[i]).Mod(inv, p)
	}
	out[0] = inv
	return out
}

// coordinates returns a public key's affine coordinates (public values).
func coordinates(ec *ecdsa.PublicKey) (x, y *big.Int, err error) {
	raw, err := ec.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, nil, err
	}
	n := (len(raw) - 1) / 2
	return new(big.Int).SetBytes(raw[1 : 1+n]), new(big.Int).SetBytes(raw[1+n:]), nil
}

func (t *curveTable) build(params *elliptic.CurveParams) {
	t.xs = make(map[string]int, smallKeyBaby)
	g := point{params.Gx, params.Gy}
	p := g
	for j := 1; j <= smallKeyBaby; j++ {
		t.xs[string(p.x.Bytes())] = j
		p = add(params, p, g)
	}
	// p = (smallKeyBaby+1)·G; the giant step is 2·smallKeyBaby·G.
	step := p
	for j := smallKeyBaby + 1; j < 2*smallKeyBaby; j++ {
		step = add(params, step, g)
	}
	t.giant = make([]point, smallKeyGiant)
	t.giant[0] = step
	for i := 1; i < smallKeyGiant; i++ {
		t.giant[i] = add(params, t.giant[i-1], step)
	}
}

// point is an affine point; x == nil is the point at infinity. Plain
// big.Int arithmetic: only public values are involved, and crypto/elliptic's
// point API is deprecated.
type point struct{ x, y *big.Int }

// add returns a+b on a short Weierstrass curve with a = -3 (the NIST curves).
func add(params *elliptic.CurveParams, a, b point) point {
	P := params.P
	if a.x == nil {
		return b
	}
	if b.x == nil {
		return a
	}
	var lambda *big.Int
	if a.x.Cmp(b.x) == 0 {
		sum := new(big.Int).Add(a.y, b.y)
		if sum.Mod(sum, P).Sign() == 0 {
			return point{}
		}
		// λ = (3x² - 3) / 2y
		num := new(big.Int).Mul(a.x, a.x)
		num.Sub(num, big.NewInt(1)).Mul(num, big.NewInt(3))
		den := new(big.Int).Lsh(a.y, 1)
		lambda = num.Mul(num, den.ModInverse(den.Mod(den, P), P))
	} else {
		num := new(big.Int).Sub(b.y, a.y)
		den := new(big.Int).Sub(b.x, a.x)
		den.Mod(den, P)
		lambda = num.Mul(num, den.ModInverse(den, P))
	}
	lambda.Mod(lambda, P)
	x := new(big.Int).Mul(lambda, lambda)
	x.Sub(x, a.x).Sub(x, b.x).Mod(x, P)
	y := new(big.Int).Sub(a.x, x)
	y.Mul(y, lambda).Sub(y, a.y).Mod(y, P)
	return point{x, y}
}

// compromisedEmudhraX are the X coordinates (P-384) of the eight eMudhra
// intermediate CA keys whose private keys were published (Mozilla bug
// 2083449), as listed by zlint's e_cert_issued_by_compromised_emudhra_ca.
// zlint checks every linted certificate's signature against them (~16 ms);
// Sigil instead refuses such a key once, when an external chain is
// imported. Its own issuer keys are generated in custody.
func compromisedEmudhraX() [8]string {
	return [...]string{
		"25dba85a64d397da0b1052e9ea546e487befea9c9d9d68a0c5eadcfeef75a69bb5d6fc01f42bfbca6eb40bcd64c0767e",
		"73897aa0eb3cfdca8b12402ffaf0abc4e1212baf8dee778ac9ee2d6db83fac280c5e05638ae7a2acd71c322a8e361cde",
		"e79ed9c04a9773c4735e51111da85ac2bd5e64ab374b80e12cbc2038ec1e4f0e3b812fc9859e1e67afb04e2f8bc97f74",
		"2d56e829a6fb82c64a4697d960af951e9067ae91f926d34306da48a8aaeb7869b6a67e6d27426e0442aa03b36e1988df",
		"138251cd52ac9298c1c8aad977321deb97e709bd0b4ca0aca55dc8ad51dcfc9d1589a1597e3a5120e1efd631c63e1835",
		"3a7a7862c8c44d324ddd69033a6782c0efeefe4055e68a123fa0371ba3bd9194514ee172a433e3630f02bd188037d9e5",
		"aabb0fb0666acfcf01fad52bfcfd4c2bf2cb3c3497de73950e5819b61fe695098741c8c491439b34a0431caffe5bf9b4",
		"b9f0e0634702a69ca6aadd443cfd62c41b9ba4b20924697d7974e7691a126fb96afb3e34c2fd3bc5f483061f265dc2a5",
	}
}

var errCompromisedKey = errors.New("key is a publicly known compromised CA key (eMudhra, Mozilla bug 2083449)")

// checkNotCompromised refuses the known compromised CA keys.
func checkNotCompromised(pub crypto.PublicKey) error {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P384() {
		return nil
	}
	raw, err := ec.Bytes()
	if err != nil {
		return err
	}
	x := fmt.Sprintf("%x", raw[1:1+48])
	for _, c := range compromisedEmudhraX() {
		if x == c {
			return errCompromisedKey
		}
	}
	return nil
}
