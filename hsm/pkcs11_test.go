package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/pkcs11"
	"go.step.sm/crypto/kms/uri"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
)

// These tests set SOFTHSM2_CONF (through hsmtest.NewSoftHSMToken), so none
// of them may call t.Parallel.

func openToken(t testing.TB, tokenURI string) *hsm.PKCS11 {
	t.Helper()
	c, err := hsm.OpenPKCS11(context.Background(), tokenURI, nil)
	if err != nil {
		t.Fatalf("OpenPKCS11: %v", err)
	}
	return c
}

func TestPKCS11Conformance(t *testing.T) {
	hsmtest.Run(t, func(t *testing.T) (hsm.Custody, func() hsm.Custody) {
		tok := hsmtest.NewSoftHSMToken(t)
		return openToken(t, tok), func() hsm.Custody { return openToken(t, tok) }
	})
}

// rawSession opens an independent miekg/pkcs11 session on the token, the
// way an auditor's tool would. The caller must call the returned cleanup.
func rawSession(t testing.TB, tokenURI string) (*pkcs11.Ctx, pkcs11.SessionHandle, func()) {
	t.Helper()
	u, err := uri.ParseWithScheme("pkcs11", tokenURI)
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(u.Get("module-path"))
	if p == nil {
		t.Fatal("cannot load module")
	}
	initialised := false
	if err := p.Initialize(); err == nil {
		initialised = true
	} else if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var slot uint
	found := false
	for _, s := range slots {
		if info, err := p.GetTokenInfo(s); err == nil && strings.TrimRight(info.Label, " ") == u.Get("token") {
			slot, found = s, true
		}
	}
	if !found {
		t.Fatal("token not found")
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(sh, pkcs11.CKU_USER, u.Pin()); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		t.Fatal(err)
	}
	return p, sh, func() {
		_ = p.CloseSession(sh)
		if initialised {
			_ = p.Finalize()
		}
		p.Destroy()
	}
}

func findOne(t testing.TB, p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		t.Fatal(err)
	}
	hs, _, err := p.FindObjects(sh, 10)
	_ = p.FindObjectsFinal(sh)
	if err != nil || len(hs) != 1 {
		t.Fatalf("found %d objects, %v", len(hs), err)
	}
	return hs[0]
}

func TestPKCS11KeysNeverLeaveToken(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(t)
	c := openToken(t, tok)
	defer c.Close()
	p, sh, done := rawSession(t, tok)
	defer done()

	tests := []struct {
		typ    hsm.KeyType
		secret uint // the attribute holding private material
	}{
		{hsm.ECDSAP256, pkcs11.CKA_VALUE},
		{hsm.ECDSAP384, pkcs11.CKA_VALUE},
		{hsm.RSA2048, pkcs11.CKA_PRIVATE_EXPONENT},
		{hsm.Ed25519, pkcs11.CKA_VALUE},
	}
	for _, tc := range tests {
		t.Run(string(tc.typ), func(t *testing.T) {
			name := "nx-" + string(tc.typ)
			if _, err := c.CreateKey(ctx, name, tc.typ); err != nil {
				t.Fatal(err)
			}
			h := findOne(t, p, sh, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, hsm.LabelPrefix+name),
			})
			attrs, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
			})
			if err != nil {
				t.Fatal(err)
			}
			want := []bool{false, true, true, true}
			for i, a := range attrs {
				if got := len(a.Value) == 1 && a.Value[0] != 0; got != want[i] {
					t.Errorf("attribute 0x%x = %v, want %v", a.Type, got, want[i])
				}
			}
			if _, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(tc.secret, nil)}); !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
				t.Errorf("reading the private value = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
			ka, err := c.KeyAttributes(ctx, name)
			if err != nil || !ka.Sensitive || ka.Extractable || !ka.NeverExtractable {
				t.Errorf("KeyAttributes = %+v, %v", ka, err)
			}
		})
	}
}

// TestPKCS11ListIgnoresForeignKeys: objects another application put on the
// token (no sigil- label, or a sigil- label with another ID) are not listed.
func TestPKCS11ListIgnoresForeignKeys(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(t)
	u, err := uri.ParseWithScheme("pkcs11", tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range []struct{ label, id string }{{"other-app", "01"}, {"sigil-impostor", "02"}} {
		cmd := exec.Command("pkcs11-tool", "--module", u.Get("module-path"), "--token-label", u.Get("token"),
			"--login", "--pin", u.Pin(), "--keypairgen", "--key-type", "EC:prime256v1", "--label", obj.label, "--id", obj.id)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pkcs11-tool: %v\n%s", err, out)
		}
	}
	c := openToken(t, tok)
	defer c.Close()
	if _, err := c.CreateKey(ctx, "mine", hsm.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	keys, err := c.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Name != "mine" {
		t.Fatalf("ListKeys = %+v, want only mine", keys)
	}
	// The impostor's label is taken, so Sigil refuses to create beside it.
	if _, err := c.CreateKey(ctx, "impostor", hsm.ECDSAP256); !errors.Is(err, hsm.ErrKeyExists) {
		t.Errorf("CreateKey over a foreign object's label = %v, want ErrKeyExists", err)
	}
}

func TestRedactURI(t *testing.T) {
	tests := []struct{ in, want string }{
		{"pkcs11:token=a?pin-value=1234", "pkcs11:token=a?pin-value=REDACTED"},
		{"pkcs11:module-path=/m.so;token=a?pin-value=s3cret&max-sessions=4", "pkcs11:module-path=/m.so;token=a?pin-value=REDACTED&max-sessions=4"},
		{"pkcs11:pin-value=1234;token=a", "pkcs11:pin-value=REDACTED;token=a"},
		{"pkcs11:token=a?PIN-VALUE=1234", "pkcs11:token=a?PIN-VALUE=REDACTED"},
		{"pkcs11:token=a?pin%2Dvalue=1234", "pkcs11:token=a?pin%2Dvalue=REDACTED"},
		{"pkcs11:token=a?pin-value=ab;cd&x=1", "pkcs11:token=a?pin-value=REDACTED;&x=1"},
		{"pkcs11:token=a?pin-source=/etc/pin", "pkcs11:token=a?pin-source=/etc/pin"},
		{"pkcs11:token=a", "pkcs11:token=a"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := hsm.RedactURI(tc.in); got != tc.want {
			t.Errorf("RedactURI(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// errorTexts returns the message of err and of everything in its chain.
func errorTexts(err error) []string {
	if err == nil {
		return nil
	}
	out := []string{err.Error()}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		out = append(out, errorTexts(u.Unwrap())...)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			out = append(out, errorTexts(e)...)
		}
	}
	return out
}

func TestPKCS11ErrorsNeverShowPIN(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(t)
	u, err := uri.ParseWithScheme("pkcs11", tok)
	if err != nil {
		t.Fatal(err)
	}
	pin := u.Pin()
	wrongPIN := "wrong" + pin
	module, label := u.Get("module-path"), u.Get("token")
	base := "pkcs11:module-path=" + module + ";token=" + label

	tests := []struct {
		name    string
		uri     string
		want    error
		secrets []string
	}{
		{"wrong PIN", base + "?pin-value=" + wrongPIN, hsm.ErrAuthFailed, []string{wrongPIN}},
		{"missing token", "pkcs11:module-path=" + module + ";token=nope?pin-value=" + pin, hsm.ErrTokenNotFound, []string{pin}},
		{"missing module", "pkcs11:module-path=/nonexistent/lib.so;token=" + label + "?pin-value=" + pin, hsm.ErrModuleNotFound, []string{pin}},
		{"malformed URI", "pkcs12:token=" + label + "?pin-value=" + pin, nil, []string{pin}},
		{"unreadable pin-source", base + "?pin-source=/nonexistent/pin", hsm.ErrAuthFailed, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := hsm.OpenPKCS11(ctx, tc.uri, nil)
			if err == nil {
				c.Close()
				t.Fatal("OpenPKCS11 succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q does not wrap %v", err, tc.want)
			}
			var pe *hsm.PKCS11Error
			if !errors.As(err, &pe) || pe.URI != hsm.RedactURI(tc.uri) {
				t.Errorf("error %q does not name the redacted URI", err)
			}
			for _, text := range errorTexts(err) {
				for _, s := range tc.secrets {
					if strings.Contains(text, s) {
						t.Errorf("error text %q contains the PIN", text)
					}
				}
			}
			t.Logf("%v", err)
		})
	}

	t.Run("wrong PIN is a CKR code", func(t *testing.T) {
		_, err := hsm.OpenPKCS11(ctx, base+"?pin-value="+wrongPIN, nil)
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)) {
			t.Errorf("%v: want CKR_PIN_INCORRECT in the chain", err)
		}
	})

	t.Run("key not found", func(t *testing.T) {
		c := openToken(t, tok)
		defer c.Close()
		for _, call := range []func() error{
			func() error { _, err := c.Signer(ctx, "absent"); return err },
			func() error { _, err := c.Key(ctx, "absent"); return err },
		} {
			err := call()
			if !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("%v: want ErrKeyNotFound", err)
			}
			for _, text := range errorTexts(err) {
				if strings.Contains(text, pin) {
					t.Errorf("error text %q contains the PIN", text)
				}
			}
			if !strings.Contains(err.Error(), "pin-value=REDACTED") {
				t.Errorf("error %q does not name the token", err)
			}
		}
	})
}

func TestPKCS11PinSource(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(t)
	u, _ := uri.ParseWithScheme("pkcs11", tok)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(u.Pin()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := openToken(t, "pkcs11:module-path="+u.Get("module-path")+";token="+u.Get("token")+"?pin-source="+pinFile)
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSoftHSMSign measures P-256 signatures per second through Sigil's
// Signer (crypto11 session pool), from GOMAXPROCS goroutines.
func BenchmarkSoftHSMSign(b *testing.B) {
	ctx := context.Background()
	c := openToken(b, hsmtest.NewSoftHSMToken(b))
	defer c.Close()
	if _, err := c.CreateKey(ctx, "bench", hsm.ECDSAP256); err != nil {
		b.Fatal(err)
	}
	s, err := c.Signer(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("bench"))
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil && !failed.Swap(true) {
				b.Error(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// BenchmarkSoftHSMRawSign is the floor: C_SignInit+C_Sign with CKM_ECDSA on
// one miekg/pkcs11 session, no pool, no Go wrapper.
func BenchmarkSoftHSMRawSign(b *testing.B) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(b)
	c := openToken(b, tok)
	defer c.Close()
	ki, err := c.CreateKey(ctx, "bench", hsm.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	p, sh, done := rawSession(b, tok)
	defer done()
	h := findOne(b, p, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, hsm.LabelPrefix+"bench"),
	})
	d := sha256.Sum256([]byte("bench"))
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	var sig []byte
	b.ResetTimer()
	for b.Loop() {
		if err := p.SignInit(sh, mech, h); err != nil {
			b.Fatal(err)
		}
		if sig, err = p.Sign(sh, d[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(ki.Public.(*ecdsa.PublicKey), d[:], r, s) {
		b.Fatal("raw signature does not verify")
	}
}

func TestPKCS11LogsNeverShowPIN(t *testing.T) {
	ctx := context.Background()
	tok := hsmtest.NewSoftHSMToken(t)
	u, _ := uri.ParseWithScheme("pkcs11", tok)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	c, err := hsm.OpenPKCS11(ctx, tok, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, "logged", hsm.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KeyWrapper(ctx, "logged"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := hsm.OpenPKCS11(ctx, strings.Replace(tok, "token=", "token=x", 1), log); err == nil {
		t.Fatal("opened a missing token")
	}
	if buf.Len() == 0 {
		t.Fatal("nothing logged")
	}
	if strings.Contains(buf.String(), u.Pin()) {
		t.Fatalf("log contains the PIN:\n%s", buf.String())
	}
}
