package transit_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/enginestest"
	"github.com/sigil-ca/sigil/engines/transit"
)

// newEngine mounts transit at each path on a real SQLite store and barrier.
func newEngine(t testing.TB, paths ...string) []*transit.Engine {
	t.Helper()
	st := enginestest.New(t, nil, transit.Register)
	var out []*transit.Engine
	for _, p := range paths {
		out = append(out, st.Mount(t, p, transit.Type).(*transit.Engine))
	}
	return out
}

// must unwraps (v, err); a failure panics, which fails the test with the
// stack that led to it.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func enc(t testing.TB, e *transit.Engine, name string, pt, ad []byte) string {
	t.Helper()
	rs := must(e.Encrypt(context.Background(), name, []transit.Item{{Plaintext: pt, AssociatedData: ad}}))
	if rs[0].Err != nil {
		t.Fatal(rs[0].Err)
	}
	return rs[0].Ciphertext
}

func dec(e *transit.Engine, name, ct string, ad []byte) ([]byte, error) {
	rs, err := e.Decrypt(context.Background(), name, []transit.Item{{Ciphertext: ct, AssociatedData: ad}})
	if err != nil {
		return nil, err
	}
	return rs[0].Plaintext, rs[0].Err
}

func TestEncryptionLifecycle(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{transit.AES256GCM, transit.ChaCha20Poly1305} {
		t.Run(typ, func(t *testing.T) {
			engs := newEngine(t, "transit", "other")
			e, other := engs[0], engs[1]
			if err := e.CreateKey(ctx, "app", typ, false); err != nil {
				t.Fatal(err)
			}
			if err := e.CreateKey(ctx, "app", typ, false); !errors.Is(err, transit.ErrKeyExists) {
				t.Fatalf("second create: %v", err)
			}
			if err := e.CreateKey(ctx, "app2", typ, false); err != nil {
				t.Fatal(err)
			}
			if err := other.CreateKey(ctx, "app", typ, false); err != nil {
				t.Fatal(err)
			}
			pt, ad := []byte("attack at dawn"), []byte("order-42")
			ct1 := enc(t, e, "app", pt, ad)
			if !strings.HasPrefix(ct1, "sigil:v1:") {
				t.Fatalf("ciphertext %q", ct1)
			}
			v := must(e.RotateKey(ctx, "app"))
			if v != 2 {
				t.Fatalf("rotated to v%d", v)
			}
			if got := must(dec(e, "app", ct1, ad)); !bytes.Equal(got, pt) {
				t.Fatalf("old ciphertext decrypts to %q", got)
			}
			rw := must(e.Rewrap(ctx, "app", []transit.Item{{Ciphertext: ct1, AssociatedData: ad}}))
			if rw[0].Err != nil || !strings.HasPrefix(rw[0].Ciphertext, "sigil:v2:") {
				t.Fatalf("rewrap: %+v", rw[0])
			}
			if got := must(dec(e, "app", rw[0].Ciphertext, ad)); !bytes.Equal(got, pt) {
				t.Fatal("rewrapped ciphertext lost the plaintext")
			}

			_, raw, _ := strings.Cut(strings.TrimPrefix(ct1, "sigil:v1:"), "")
			tampered := "sigil:v1:" + flipLast(raw)
			for name, tc := range map[string]struct {
				key, ct string
				ad      []byte
				eng     *transit.Engine
			}{
				"tampered":         {"app", tampered, ad, e},
				"wrong aad":        {"app", ct1, []byte("order-43"), e},
				"missing aad":      {"app", ct1, nil, e},
				"other key":        {"app2", ct1, ad, e},
				"other mount":      {"app", ct1, ad, other},
				"relabelled v2":    {"app", strings.Replace(ct1, "sigil:v1:", "sigil:v2:", 1), ad, e},
				"unknown version":  {"app", strings.Replace(ct1, "sigil:v1:", "sigil:v9:", 1), ad, e},
				"not base64":       {"app", "sigil:v1:!!!", ad, e},
				"no prefix":        {"app", "vault:v1:abc", ad, e},
				"leading zero ver": {"app", strings.Replace(ct1, "sigil:v1:", "sigil:v01:", 1), ad, e},
				"too short":        {"app", "sigil:v1:AAAA", ad, e},
			} {
				if _, err := dec(tc.eng, tc.key, tc.ct, tc.ad); !errors.Is(err, transit.ErrInvalidCiphertext) {
					t.Errorf("%s: %v, want ErrInvalidCiphertext", name, err)
				}
			}

			two := 2
			if err := e.ConfigureKey(ctx, "app", transit.KeyConfig{MinDecryptionVersion: &two}); err != nil {
				t.Fatal(err)
			}
			if _, err := dec(e, "app", ct1, ad); !errors.Is(err, transit.ErrVersionTooOld) {
				t.Fatalf("v1 after min_decryption_version=2: %v", err)
			}
			three := 3
			if err := e.ConfigureKey(ctx, "app", transit.KeyConfig{MinDecryptionVersion: &three}); !errors.Is(err, engines.ErrInvalidRequest) {
				t.Fatalf("min version above latest: %v", err)
			}

			if err := e.DeleteKey(ctx, "app"); !errors.Is(err, engines.ErrInvalidRequest) {
				t.Fatalf("delete without deletion_allowed: %v", err)
			}
			yes := true
			if err := e.ConfigureKey(ctx, "app", transit.KeyConfig{DeletionAllowed: &yes}); err != nil {
				t.Fatal(err)
			}
			if err := e.DeleteKey(ctx, "app"); err != nil {
				t.Fatal(err)
			}
			if _, err := e.ReadKey(ctx, "app"); !errors.Is(err, transit.ErrKeyNotFound) {
				t.Fatalf("read deleted key: %v", err)
			}
			if names := must(e.ListKeys(ctx)); len(names) != 1 || names[0] != "app2" {
				t.Fatalf("keys %v", names)
			}
		})
	}
}

func flipLast(s string) string {
	b := []byte(s)
	i := len(b) - 3
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestLimitsAndTypes(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, "t")[0]
	for _, k := range []struct{ name, typ string }{{"aes", transit.AES256GCM}, {"ed", transit.Ed25519}, {"mac", transit.HMAC}} {
		if err := e.CreateKey(ctx, k.name, k.typ, false); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"plaintext over 1 MiB", func() error {
			rs, err := e.Encrypt(ctx, "aes", []transit.Item{{Plaintext: make([]byte, transit.MaxInput+1)}})
			if err != nil {
				return err
			}
			return rs[0].Err
		}, transit.ErrTooLarge},
		{"batch over 1000 items", func() error {
			_, err := e.Encrypt(ctx, "aes", make([]transit.Item, transit.MaxBatch+1))
			return err
		}, transit.ErrTooLarge},
		{"batch over 4 MiB", func() error {
			items := make([]transit.Item, 5)
			for i := range items {
				items[i].Plaintext = make([]byte, transit.MaxInput)
			}
			_, err := e.Encrypt(ctx, "aes", items)
			return err
		}, transit.ErrTooLarge},
		{"empty batch", func() error { _, err := e.Encrypt(ctx, "aes", nil); return err }, engines.ErrInvalidRequest},
		{"encrypt with a signing key", func() error {
			_, err := e.Encrypt(ctx, "ed", []transit.Item{{Plaintext: []byte("x")}})
			return err
		}, transit.ErrWrongKeyType},
		{"sign with an AES key", func() error { _, err := e.Sign(ctx, "aes", []byte("x"), transit.SignOptions{}); return err }, transit.ErrWrongKeyType},
		{"hmac with an AES key", func() error { _, err := e.HMAC(ctx, "aes", []byte("x")); return err }, transit.ErrWrongKeyType},
		{"unknown key type", func() error { return e.CreateKey(ctx, "x", "des", false) }, engines.ErrInvalidRequest},
		{"bad key name", func() error { return e.CreateKey(ctx, "a/b", transit.AES256GCM, false) }, engines.ErrInvalidPath},
		{"unknown key", func() error { _, err := e.ReadKey(ctx, "nope"); return err }, transit.ErrKeyNotFound},
		{"prehashed ed25519", func() error {
			_, err := e.Sign(ctx, "ed", make([]byte, 32), transit.SignOptions{Prehashed: true})
			return err
		}, engines.ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// A bad item fails alone.
	rs := must(e.Decrypt(ctx, "aes", []transit.Item{{Ciphertext: enc(t, e, "aes", []byte("ok"), nil)}, {Ciphertext: "sigil:v1:AAAA"}}))
	if rs[0].Err != nil || string(rs[0].Plaintext) != "ok" || !errors.Is(rs[1].Err, transit.ErrInvalidCiphertext) {
		t.Fatalf("batch results %+v", rs)
	}
}

func TestSignAndHMAC(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, "t")[0]
	msg := []byte("release v1.2.3")
	sum := sha256.Sum256(msg)
	for _, tc := range []struct {
		typ  string
		opts transit.SignOptions
	}{
		{transit.ECDSAP256, transit.SignOptions{}},
		{transit.ECDSAP256, transit.SignOptions{Prehashed: true}},
		{transit.Ed25519, transit.SignOptions{}},
		{transit.RSA3072, transit.SignOptions{}},
		{transit.RSA3072, transit.SignOptions{RSAPKCS1v15: true}},
	} {
		name := strings.ReplaceAll(tc.typ, "-", "") + map[bool]string{true: "pre", false: ""}[tc.opts.Prehashed] + map[bool]string{true: "pkcs1", false: ""}[tc.opts.RSAPKCS1v15]
		t.Run(name, func(t *testing.T) {
			if err := e.CreateKey(ctx, name, tc.typ, false); err != nil {
				t.Fatal(err)
			}
			in := msg
			if tc.opts.Prehashed {
				in = sum[:]
			}
			sig := must(e.Sign(ctx, name, in, tc.opts))
			if ok := must(e.Verify(ctx, name, in, sig, tc.opts)); !ok {
				t.Fatal("own signature does not verify")
			}
			if ok := must(e.Verify(ctx, name, []byte("other"), sig, transit.SignOptions{RSAPKCS1v15: tc.opts.RSAPKCS1v15})); ok && !tc.opts.Prehashed {
				t.Fatal("signature verifies another message")
			}
			must(e.RotateKey(ctx, name))
			if ok := must(e.Verify(ctx, name, in, sig, tc.opts)); !ok {
				t.Fatal("v1 signature no longer verifies after rotation")
			}
			info := must(e.ReadKey(ctx, name))
			if len(info.Versions) != 2 || !strings.Contains(info.Versions[0].PublicKeyPEM, "PUBLIC KEY") {
				t.Fatalf("read: %+v", info)
			}
		})
	}
	if err := e.CreateKey(ctx, "mac", transit.HMAC, false); err != nil {
		t.Fatal(err)
	}
	tag := must(e.HMAC(ctx, "mac", msg))
	if ok := must(e.VerifyHMAC(ctx, "mac", msg, tag)); !ok {
		t.Fatal("own HMAC does not verify")
	}
	if ok := must(e.VerifyHMAC(ctx, "mac", []byte("other"), tag)); ok {
		t.Fatal("HMAC verifies another message")
	}
}

// Two nodes rotating one key at once never lose a version.
func TestConcurrentRotate(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, "t")[0]
	if err := e.CreateKey(ctx, "k", transit.AES256GCM, false); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := e.RotateKey(ctx, "k"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if info := must(e.ReadKey(ctx, "k")); info.Latest != 9 || len(info.Versions) != 9 {
		t.Fatalf("after 8 concurrent rotations: latest v%d, %d versions", info.Latest, len(info.Versions))
	}
}

func FuzzParseVersioned(f *testing.F) {
	f.Add("sigil:v1:AAAA")
	f.Add("sigil:v99999:")
	f.Add("sigil:v0:AA==")
	f.Fuzz(func(t *testing.T, s string) {
		v, b, err := transit.ParseVersioned(s)
		if err == nil && (v < 1 || b == nil && !strings.HasSuffix(s, ":")) {
			t.Fatalf("accepted %q as v%d", s, v)
		}
	})
}

func benchEncrypt(b *testing.B, items int) {
	e := newEngine(b, "t")[0]
	ctx := context.Background()
	if err := e.CreateKey(ctx, "k", transit.AES256GCM, false); err != nil {
		b.Fatal(err)
	}
	batch := make([]transit.Item, items)
	for i := range batch {
		batch[i].Plaintext = make([]byte, 1024)
	}
	b.SetBytes(int64(1024 * items))
	for b.Loop() {
		if _, err := e.Encrypt(ctx, "k", batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*items)/b.Elapsed().Seconds(), "items/s")
}

func BenchmarkEncrypt1KiB(b *testing.B)          { benchEncrypt(b, 1) }
func BenchmarkEncryptBatch100x1KiB(b *testing.B) { benchEncrypt(b, 100) }

func BenchmarkDecrypt1KiB(b *testing.B) {
	e := newEngine(b, "t")[0]
	ctx := context.Background()
	if err := e.CreateKey(ctx, "k", transit.AES256GCM, false); err != nil {
		b.Fatal(err)
	}
	ct := enc(b, e, "k", make([]byte, 1024), nil)
	b.SetBytes(1024)
	for b.Loop() {
		if _, err := dec(e, "k", ct, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// BenchmarkRawAESGCM1KiB is the ceiling: one AES-256-GCM seal of 1 KiB
// with a fresh random nonce, nothing else.
func BenchmarkRawAESGCM1KiB(b *testing.B) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	blk, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(blk)
	pt := make([]byte, 1024)
	nonce := make([]byte, 12)
	out := make([]byte, 0, 1024+16)
	b.SetBytes(1024)
	for b.Loop() {
		_, _ = rand.Read(nonce)
		out = g.Seal(out[:0], nonce, pt, nil)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// Rotations while other goroutines encrypt and rotate: update must change
// a copy of the key of its own, never the cached one that readers (and
// other updates) hold, and a reader that fetched the key before a rotation
// must not cache that copy after it: this node then reads its own writes
// (the final ReadKey, served from the cache, sees every rotation). Several
// rounds, as the stale-cache interleaving is rare in one. Run with -race.
func TestRotateWhileEncrypting(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, "t")[0]
	for round := range 25 {
		name := fmt.Sprintf("k%d", round)
		if err := e.CreateKey(ctx, name, transit.AES256GCM, false); err != nil {
			t.Fatal(err)
		}
		// As many rotations at once as TestConcurrentRotate, which the
		// compare-and-swap retries absorb, beside readers of the cached key.
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if _, err := e.RotateKey(ctx, name); err != nil {
					t.Error(err)
				}
			})
			wg.Go(func() {
				for range 10 {
					if _, err := e.Encrypt(ctx, name, []transit.Item{{Plaintext: []byte("x")}}); err != nil {
						t.Error(err)
					}
					if _, err := e.ReadKey(ctx, name); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		if info := must(e.ReadKey(ctx, name)); info.Latest != 9 || len(info.Versions) != 9 {
			t.Fatalf("round %d: after 8 concurrent rotations: latest v%d, %d versions", round, info.Latest, len(info.Versions))
		}
	}
}
