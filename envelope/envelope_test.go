package envelope

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"testing"
	"time"
)

func TestKEMIDsMatchStandardLibrary(t *testing.T) {
	for id, kem := range map[uint16]hpke.KEM{
		KEMX25519HKDFSHA256: hpke.DHKEM(ecdh.X25519()),
		KEMP256HKDFSHA256:   hpke.DHKEM(ecdh.P256()),
		KEMMLKEM768X25519:   hpke.MLKEM768X25519(),
	} {
		if kem.ID() != id {
			t.Errorf("KEM id 0x%04x, standard library says 0x%04x", id, kem.ID())
		}
	}
}

func selfSigned(t *testing.T, key *ecdsa.PrivateKey, nb, na time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "workload"}, NotBefore: nb, NotAfter: na}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type keyPair struct {
	priv hpke.PrivateKey
	rcpt Recipient
}

func newPair(t *testing.T, kem uint16) keyPair {
	t.Helper()
	if kem == KEMP256HKDFSHA256 {
		// The certificate path: an ECDSA key in a certificate.
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		r, err := RecipientFromCertificate(selfSigned(t, k, now.Add(-time.Hour), now.Add(time.Hour)), now)
		if err != nil {
			t.Fatal(err)
		}
		priv, err := PrivateKeyFromECDSA(k)
		if err != nil {
			t.Fatal(err)
		}
		return keyPair{priv, r}
	}
	priv, r, err := GenerateKey(kem)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{priv, r}
}

func TestSealOpen(t *testing.T) {
	const lease = "db/readonly/abc123"
	payload := []byte(`{"username":"u","password":"p"}`)
	for _, tc := range []struct {
		name string
		kem  uint16
	}{
		{"x25519", KEMX25519HKDFSHA256},
		{"mlkem768-x25519", KEMMLKEM768X25519},
		{"p256-certificate", KEMP256HKDFSHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kp := newPair(t, tc.kem)
			other := newPair(t, tc.kem)
			env, err := Seal(kp.rcpt, lease, payload)
			if err != nil {
				t.Fatal(err)
			}
			// Through the text wire form, as a client would receive it.
			env2, err := Parse(env.String())
			if err != nil {
				t.Fatal(err)
			}
			got, err := Open(kp.priv, env2, lease)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("Open = %q, %v", got, err)
			}
			// A private key that went through its serialised form opens too.
			priv2, err := ParsePrivateKey(tc.kem, mustBytes(t, kp.priv))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Open(priv2, env2, lease); err != nil {
				t.Fatalf("reparsed key: %v", err)
			}

			fail := []struct {
				name  string
				priv  hpke.PrivateKey
				env   func() *Envelope
				lease string
			}{
				{"wrong lease id", kp.priv, func() *Envelope { return env2 }, "db/readonly/other"},
				{"empty lease id", kp.priv, func() *Envelope { return env2 }, ""},
				{"wrong key", other.priv, func() *Envelope { return env2 }, lease},
				{"flipped ciphertext", kp.priv, func() *Envelope {
					e := *env2
					e.Ciphertext = append([]byte(nil), e.Ciphertext...)
					e.Ciphertext[0] ^= 1
					return &e
				}, lease},
				{"flipped enc", kp.priv, func() *Envelope {
					e := *env2
					e.Enc = append([]byte(nil), e.Enc...)
					e.Enc[len(e.Enc)-1] ^= 1
					return &e
				}, lease},
			}
			for _, f := range fail {
				if _, err := Open(f.priv, f.env(), f.lease); !errors.Is(err, ErrOpen) {
					t.Errorf("%s: Open err = %v, want ErrOpen", f.name, err)
				}
			}
		})
	}
}

func mustBytes(t *testing.T, k hpke.PrivateKey) []byte {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeyOfAnotherKEMFails(t *testing.T) {
	a := newPair(t, KEMX25519HKDFSHA256)
	b := newPair(t, KEMMLKEM768X25519)
	env, err := Seal(a.rcpt, "l", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(b.priv, env, "l"); !errors.Is(err, ErrOpen) {
		t.Fatalf("err = %v", err)
	}
}

func TestSealData(t *testing.T) {
	kp := newPair(t, KEMX25519HKDFSHA256)
	data := map[string]string{"username": "sigil_ro_x", "password": "s3cret"}
	env, err := SealData(kp.rcpt, "m/r/1", data)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains([]byte(env.String()), []byte("s3cret")) {
		t.Fatal("secret in clear")
	}
	got, err := OpenData(kp.priv, env, "m/r/1")
	if err != nil || got["password"] != "s3cret" || got["username"] != "sigil_ro_x" {
		t.Fatalf("OpenData = %v, %v", got, err)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := Seal(Recipient{KEM: 0x9999, PublicKey: make([]byte, 32)}, "l", nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unknown KEM: %v", err)
	}
	if err := (Recipient{KEM: KEMX25519HKDFSHA256, PublicKey: []byte{1, 2}}).Validate(); !errors.Is(err, ErrMalformed) {
		t.Errorf("short key: %v", err)
	}
	kp := newPair(t, KEMX25519HKDFSHA256)
	if _, err := Seal(kp.rcpt, "l", make([]byte, MaxPayload+1)); !errors.Is(err, ErrUnsupported) {
		t.Errorf("big payload: %v", err)
	}
	for _, s := range []string{"", "AQ", "!!", "AgAgAAEAAgAA"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) succeeded", s)
		}
	}
	// Truncated enc.
	env, _ := Seal(kp.rcpt, "l", []byte("x"))
	b, _ := env.MarshalBinary()
	var e Envelope
	if err := e.UnmarshalBinary(b[:headerLen+10]); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated: %v", err)
	}
}

func TestCertificateRecipient(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	expired := selfSigned(t, k, now.Add(-2*time.Hour), now.Add(-time.Hour))
	if _, err := RecipientFromCertificate(expired, now); !errors.Is(err, ErrCertificate) {
		t.Errorf("expired: %v", err)
	}
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := RecipientFromCertificate(selfSigned(t, k384, now.Add(-time.Hour), now.Add(time.Hour)), now); !errors.Is(err, ErrUnsupported) {
		t.Errorf("P-384: %v", err)
	}
	_, edk, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, edk.Public(), edk)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	if _, err := RecipientFromCertificate(c, now); !errors.Is(err, ErrUnsupported) {
		t.Errorf("ed25519: %v", err)
	}
}

// TestVector pins the wire layout, so a change that would break other
// clients fails here.
func TestWireLayout(t *testing.T) {
	kp := newPair(t, KEMX25519HKDFSHA256)
	env, err := Seal(kp.rcpt, "l", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := env.MarshalBinary()
	want := []byte{1, 0x00, 0x20, 0x00, 0x01, 0x00, 0x02, 0x00, 32}
	if !bytes.Equal(b[:headerLen], want) {
		t.Fatalf("header % x, want % x", b[:headerLen], want)
	}
	if len(b) != headerLen+32+len("hello")+16 {
		t.Fatalf("length %d", len(b))
	}
}

// TestValidateSaysWhatIsWrong: each bad recipient key is refused before
// anything is sealed, with a reason a person can act on and the sentinel
// callers branch on. A low-order X25519 key parses, so only the trial
// encapsulation in Validate catches it.
func TestValidateSaysWhatIsWrong(t *testing.T) {
	p256 := newPair(t, KEMP256HKDFSHA256).rcpt.PublicKey
	offCurve := append([]byte{4}, make([]byte, 64)...)
	xwing := newPair(t, KEMMLKEM768X25519).rcpt.PublicKey
	for _, tc := range []struct {
		name string
		r    Recipient
		want string
		is   error
	}{
		{"all-zero X25519", Recipient{KEM: KEMX25519HKDFSHA256, PublicKey: make([]byte, 32)},
			"X25519 public key (KEM 0x0020): a low-order point (such as all zeros) that no secret can be sealed to", ErrMalformed},
		{"short X25519", Recipient{KEM: KEMX25519HKDFSHA256, PublicKey: []byte{1, 2}},
			"X25519 public key (KEM 0x0020): is 2 bytes, want 32", ErrMalformed},
		{"P-256 key sent as X25519", Recipient{KEM: KEMX25519HKDFSHA256, PublicKey: p256},
			"X25519 public key (KEM 0x0020): is 65 bytes, want 32 (65 bytes is a P-256 key: send KEM 0x0010)", ErrMalformed},
		{"P-256 point off the curve", Recipient{KEM: KEMP256HKDFSHA256, PublicKey: offCurve},
			"P-256 public key (KEM 0x0010): not a valid point on the curve", ErrMalformed},
		{"unknown KEM", Recipient{KEM: 0x9999, PublicKey: make([]byte, 32)},
			"KEM 0x9999 is not supported: use 0x0020 (X25519), 0x0010 (P-256) or 0x647a (MLKEM768-X25519)", ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.Validate()
			if err == nil || err.Error() != tc.want || !errors.Is(err, tc.is) {
				t.Fatalf("Validate = %v, want %q (is %v)", err, tc.want, tc.is)
			}
			if _, err := Seal(tc.r, "l", []byte("x")); err == nil {
				t.Fatal("Seal accepted the key Validate refused")
			}
			if s, err := tc.r.NewSealer(); err == nil || err.Error() != tc.want || s != nil {
				t.Fatalf("NewSealer = %v, %v, want %q", s, err, tc.want)
			}
		})
	}
	for _, ok := range []Recipient{{KEM: KEMP256HKDFSHA256, PublicKey: p256}, {KEM: KEMMLKEM768X25519, PublicKey: xwing}} {
		if err := ok.Validate(); err != nil {
			t.Errorf("Validate(good KEM 0x%04x) = %v", ok.KEM, err)
		}
	}
}

// TestSealerSealsEachEnvelopeWithItsOwnContext: the encapsulation a
// Sealer prepares serves one envelope; every later seal, concurrent or
// not, gets a fresh ephemeral key, and each envelope opens only for its
// own lease id.
func TestSealerSealsEachEnvelopeWithItsOwnContext(t *testing.T) {
	for _, kem := range []uint16{KEMX25519HKDFSHA256, KEMP256HKDFSHA256, KEMMLKEM768X25519} {
		t.Run(kemName(kem), func(t *testing.T) {
			p := newPair(t, kem)
			s, err := p.rcpt.NewSealer()
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Recipient(); got.KEM != kem || !bytes.Equal(got.PublicKey, p.rcpt.PublicKey) || !s.SealsTo(p.rcpt) {
				t.Fatalf("Recipient = %+v, want %+v", got, p.rcpt)
			}
			if s.SealsTo(newPair(t, kem).rcpt) {
				t.Fatal("SealsTo another key")
			}
			const n = 8
			envs := make([]*Envelope, n)
			errc := make(chan error, n)
			for i := range n {
				go func() {
					e, err := s.SealData(fmt.Sprintf("lease-%d", i), map[string]string{"i": fmt.Sprint(i)})
					envs[i] = e
					errc <- err
				}()
			}
			for range n {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
			seen := map[string]bool{}
			for i, e := range envs {
				if seen[string(e.Enc)] {
					t.Fatalf("envelope %d reuses an encapsulation", i)
				}
				seen[string(e.Enc)] = true
				d, err := OpenData(p.priv, e, fmt.Sprintf("lease-%d", i))
				if err != nil || d["i"] != fmt.Sprint(i) {
					t.Fatalf("open envelope %d = %v, %v", i, d, err)
				}
				if _, err := OpenData(p.priv, e, fmt.Sprintf("lease-%d", (i+1)%n)); !errors.Is(err, ErrOpen) {
					t.Fatalf("envelope %d opened for another lease id: %v", i, err)
				}
			}
		})
	}
}
