// Package hsmtest is the conformance suite every hsm.Custody implementation
// must pass, plus an in-memory hsm.BlobStore for tests of the soft keystore.
package hsmtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/hsm"
)

// Option tunes Run.
type Option func(*options)

type options struct {
	unsupported map[hsm.KeyType]bool
}

// Unsupported declares key types the implementation cannot create. For them
// the suite requires CreateKey to fail with hsm.ErrBadKeyType.
func Unsupported(types ...hsm.KeyType) Option {
	return func(o *options) {
		for _, t := range types {
			o.unsupported[t] = true
		}
	}
}

// Run exercises a Custody. open returns a fresh, empty custody and a reopen
// function that returns a new instance over the same backing keys (a process
// restart); Run closes each instance before reopening. Each key type is
// generated exactly once (RSA-4096 is slow), so the whole suite costs one
// generation per type.
func Run(t *testing.T, open func(t *testing.T) (c hsm.Custody, reopen func() hsm.Custody), opts ...Option) {
	o := options{unsupported: map[hsm.KeyType]bool{}}
	for _, opt := range opts {
		opt(&o)
	}
	ctx := context.Background()
	c, reopen := open(t)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = c.Close()
		}
	})

	var supported []hsm.KeyType
	for _, typ := range hsm.KeyTypes {
		if !o.unsupported[typ] {
			supported = append(supported, typ)
		}
	}
	keyName := func(typ hsm.KeyType) string { return "conf-" + string(typ) }

	t.Run("Ping", func(t *testing.T) {
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	})

	t.Run("EmptyList", func(t *testing.T) {
		keys, err := c.ListKeys(ctx)
		if err != nil || len(keys) != 0 {
			t.Fatalf("ListKeys on empty custody = %v, %v", names(keys), err)
		}
	})

	t.Run("BadNames", func(t *testing.T) {
		for _, name := range []string{"", "a/b", "a b", "../x", "ключ", "pkcs11:id=01", "x;object=y", strings.Repeat("a", 65)} {
			if _, err := c.CreateKey(ctx, name, hsm.ECDSAP256); err == nil {
				t.Errorf("CreateKey(%q) succeeded", name)
			} else if errors.Is(err, hsm.ErrKeyExists) {
				t.Errorf("CreateKey(%q) = %v; want a name error", name, err)
			}
			if _, err := c.Signer(ctx, name); err == nil {
				t.Errorf("Signer(%q) succeeded", name)
			}
		}
		if _, err := c.CreateKey(ctx, strings.Repeat("a", 64), "no-such-type"); !errors.Is(err, hsm.ErrBadKeyType) {
			t.Errorf("CreateKey with unknown type = %v, want ErrBadKeyType", err)
		}
	})

	t.Run("Missing", func(t *testing.T) {
		if _, err := c.Key(ctx, "missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("Key(missing) = %v, want ErrKeyNotFound", err)
		}
		if _, err := c.Signer(ctx, "missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("Signer(missing) = %v, want ErrKeyNotFound", err)
		}
	})

	created := map[hsm.KeyType]hsm.KeyInfo{}
	t.Run("Create", func(t *testing.T) {
		for _, typ := range hsm.KeyTypes {
			t.Run(string(typ), func(t *testing.T) {
				ki, err := c.CreateKey(ctx, keyName(typ), typ)
				if o.unsupported[typ] {
					if !errors.Is(err, hsm.ErrBadKeyType) {
						t.Fatalf("CreateKey(unsupported %s) = %v, want ErrBadKeyType", typ, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("CreateKey: %v", err)
				}
				if ki.Name != keyName(typ) || ki.Type != typ || ki.Public == nil {
					t.Fatalf("CreateKey returned %+v", ki)
				}
				checkPublicType(t, typ, ki.Public)
				created[typ] = ki
				if _, err := c.CreateKey(ctx, keyName(typ), typ); !errors.Is(err, hsm.ErrKeyExists) {
					t.Errorf("second CreateKey = %v, want ErrKeyExists", err)
				}
				got, err := c.Key(ctx, keyName(typ))
				if err != nil {
					t.Fatalf("Key: %v", err)
				}
				if got.Type != typ || !samePublic(got.Public, ki.Public) {
					t.Errorf("Key = %+v, want type %s and the created public key", got, typ)
				}
			})
		}
	})
	if len(created) != len(supported) {
		t.Fatalf("created %d of %d supported key types; stopping", len(created), len(supported))
	}

	t.Run("SignVerify", func(t *testing.T) {
		for _, typ := range supported {
			t.Run(string(typ), func(t *testing.T) {
				s, err := c.Signer(ctx, keyName(typ))
				if err != nil {
					t.Fatalf("Signer: %v", err)
				}
				if !samePublic(s.Public(), created[typ].Public) {
					t.Fatal("signer's public key differs from the created one")
				}
				signAndVerify(t, s, []byte("conformance "+string(typ)))
			})
		}
	})

	t.Run("Duplicate", func(t *testing.T) {
		// A duplicate of another type must not replace the key either.
		if _, err := c.CreateKey(ctx, keyName(hsm.ECDSAP256), hsm.ECDSAP384); !errors.Is(err, hsm.ErrKeyExists) {
			t.Errorf("CreateKey over an existing name with another type = %v, want ErrKeyExists", err)
		}
	})

	t.Run("List", func(t *testing.T) {
		checkList(t, c, supported, created, keyName)
	})

	t.Run("ConcurrentSign", func(t *testing.T) {
		s, err := c.Signer(ctx, keyName(hsm.ECDSAP256))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 25 {
					msg := fmt.Appendf(nil, "goroutine %d message %d", g, i)
					d := sha256.Sum256(msg)
					sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
					if err != nil {
						t.Errorf("Sign: %v", err)
						return
					}
					if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
						t.Error("signature does not verify")
						return
					}
				}
			})
		}
		// Every key type, and signers obtained concurrently, must work too.
		for _, typ := range supported {
			for range 2 {
				wg.Go(func() {
					s, err := c.Signer(ctx, keyName(typ))
					if err != nil {
						t.Errorf("Signer(%s): %v", typ, err)
						return
					}
					for range 3 {
						if err := signVerify(s, []byte("concurrent "+string(typ))); err != nil {
							t.Errorf("%s: %v", typ, err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
	})

	t.Run("Reopen", func(t *testing.T) {
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		closed = true
		c = reopen()
		closed = false
		checkList(t, c, supported, created, keyName)
		for _, typ := range supported {
			t.Run(string(typ), func(t *testing.T) {
				ki, err := c.Key(ctx, keyName(typ))
				if err != nil {
					t.Fatalf("Key after reopen: %v", err)
				}
				if !samePublic(ki.Public, created[typ].Public) || ki.Type != typ {
					t.Fatal("key changed across reopen")
				}
				s, err := c.Signer(ctx, keyName(typ))
				if err != nil {
					t.Fatalf("Signer after reopen: %v", err)
				}
				signAndVerify(t, s, []byte("after reopen"))
				if _, err := c.CreateKey(ctx, keyName(typ), typ); !errors.Is(err, hsm.ErrKeyExists) {
					t.Errorf("CreateKey after reopen = %v, want ErrKeyExists", err)
				}
			})
		}
		if _, err := c.Signer(ctx, "missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("Signer(missing) after reopen = %v, want ErrKeyNotFound", err)
		}
	})

	t.Run("ConcurrentCreate", func(t *testing.T) {
		// Racing creations of one name: exactly one wins, the rest see
		// ErrKeyExists, and the survivor is the key every caller then uses.
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []hsm.KeyInfo
		)
		for range 4 {
			wg.Go(func() {
				ki, err := c.CreateKey(ctx, "race", hsm.ECDSAP256)
				switch {
				case err == nil:
					mu.Lock()
					winners = append(winners, ki)
					mu.Unlock()
				case !errors.Is(err, hsm.ErrKeyExists):
					t.Errorf("CreateKey: %v", err)
				}
			})
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("%d concurrent creations succeeded, want 1", len(winners))
		}
		s, err := c.Signer(ctx, "race")
		if err != nil {
			t.Fatal(err)
		}
		if !samePublic(s.Public(), winners[0].Public) {
			t.Error("the stored key is not the one reported created")
		}
		signAndVerify(t, s, []byte("race"))
	})

	t.Run("Destroy", func(t *testing.T) {
		// A destroyed key is gone: not described, listed or signed with,
		// not even through a signer obtained before, and not after a
		// restart; other keys are untouched.
		d, ok := c.(hsm.KeyDestroyer)
		if !ok {
			t.Fatalf("%T cannot destroy keys", c)
		}
		if _, err := c.CreateKey(ctx, "doomed", hsm.ECDSAP256); err != nil {
			t.Fatal(err)
		}
		before, err := c.Signer(ctx, "doomed")
		if err != nil {
			t.Fatal(err)
		}
		signAndVerify(t, before, []byte("before"))
		if err := d.DestroyKey(ctx, "doomed"); err != nil {
			t.Fatalf("DestroyKey: %v", err)
		}
		check := func(c hsm.Custody, when string) {
			t.Helper()
			if _, err := c.Key(ctx, "doomed"); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("Key %s = %v, want ErrKeyNotFound", when, err)
			}
			if _, err := c.Signer(ctx, "doomed"); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("Signer %s = %v, want ErrKeyNotFound", when, err)
			}
			keys, err := c.ListKeys(ctx)
			if err != nil || slices.Contains(names(keys), "doomed") {
				t.Errorf("ListKeys %s = %v, %v: still listed", when, names(keys), err)
			}
			s, err := c.Signer(ctx, "race")
			if err != nil {
				t.Fatalf("another key %s: %v", when, err)
			}
			signAndVerify(t, s, []byte("untouched"))
		}
		check(c, "after DestroyKey")
		digest := sha256.Sum256([]byte("after"))
		if _, err := before.Sign(rand.Reader, digest[:], crypto.SHA256); err == nil {
			t.Error("a signer obtained before DestroyKey still signs")
		}
		if err := d.DestroyKey(ctx, "doomed"); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("DestroyKey again = %v, want ErrKeyNotFound", err)
		}
		if err := d.DestroyKey(ctx, "../x"); err == nil || errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("DestroyKey(bad name) = %v, want a name error", err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		closed = true
		c = reopen()
		closed = false
		check(c, "after a restart")
	})
}

func names(keys []hsm.KeyInfo) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.Name
	}
	return out
}

func checkList(t *testing.T, c hsm.Custody, supported []hsm.KeyType, created map[hsm.KeyType]hsm.KeyInfo, keyName func(hsm.KeyType) string) {
	t.Helper()
	keys, err := c.ListKeys(context.Background())
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	var want []string
	for _, typ := range supported {
		want = append(want, keyName(typ))
	}
	slices.Sort(want)
	if got := names(keys); !reflect.DeepEqual(got, want) {
		t.Fatalf("ListKeys = %v, want %v (sorted)", got, want)
	}
	for _, k := range keys {
		typ := hsm.KeyType(strings.TrimPrefix(k.Name, "conf-"))
		if k.Type != typ || !samePublic(k.Public, created[typ].Public) {
			t.Errorf("ListKeys entry %s = type %s, public key matches %v", k.Name, k.Type, samePublic(k.Public, created[typ].Public))
		}
	}
}

func checkPublicType(t *testing.T, typ hsm.KeyType, pub crypto.PublicKey) {
	t.Helper()
	ok := false
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		ok = (typ == hsm.ECDSAP256 && p.Curve.Params().BitSize == 256) || (typ == hsm.ECDSAP384 && p.Curve.Params().BitSize == 384)
	case *rsa.PublicKey:
		ok = string(typ) == fmt.Sprintf("rsa-%d", p.N.BitLen())
	case ed25519.PublicKey:
		ok = typ == hsm.Ed25519
	}
	if !ok {
		t.Errorf("public key %T does not match type %s", pub, typ)
	}
}

func samePublic(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// signAndVerify signs msg the way each algorithm is used in X.509 and checks
// the signature with the standard library.
func signAndVerify(t *testing.T, s crypto.Signer, msg []byte) {
	t.Helper()
	if err := signVerify(s, msg); err != nil {
		t.Fatal(err)
	}
}

// signVerify is signAndVerify for goroutines, which must not call t.Fatal.
func signVerify(s crypto.Signer, msg []byte) error {
	switch pub := s.Public().(type) {
	case *ecdsa.PublicKey:
		var d []byte
		var h crypto.Hash
		if pub.Curve.Params().BitSize == 384 {
			sum := sha512.Sum384(msg)
			d, h = sum[:], crypto.SHA384
		} else {
			sum := sha256.Sum256(msg)
			d, h = sum[:], crypto.SHA256
		}
		sig, err := s.Sign(rand.Reader, d, h)
		if err != nil {
			return fmt.Errorf("ECDSA Sign: %w", err)
		}
		if !ecdsa.VerifyASN1(pub, d, sig) {
			return errors.New("signature (ECDSA) does not verify")
		}
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			return fmt.Errorf("sign PKCS#1 v1.5: %w", err)
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig); err != nil {
			return fmt.Errorf("PKCS#1 v1.5 signature: %w", err)
		}
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
		sig, err = s.Sign(rand.Reader, d[:], pss)
		if err != nil {
			return fmt.Errorf("sign PSS: %w", err)
		}
		if err := rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, pss); err != nil {
			return fmt.Errorf("PSS signature: %w", err)
		}
	case ed25519.PublicKey:
		sig, err := s.Sign(rand.Reader, msg, crypto.Hash(0))
		if err != nil {
			return fmt.Errorf("Ed25519 Sign: %w", err)
		}
		if !ed25519.Verify(pub, msg, sig) {
			return errors.New("signature (Ed25519) does not verify")
		}
	default:
		return fmt.Errorf("unexpected public key %T", pub)
	}
	return nil
}

// MemBlobStore is an in-memory hsm.BlobStore with the same uniqueness rule
// as storage.KeyBlobs. It copies on the way in and out.
type MemBlobStore struct {
	mu    sync.Mutex
	blobs map[string]hsm.Blob
}

// NewMemBlobStore returns an empty store.
func NewMemBlobStore() *MemBlobStore {
	return &MemBlobStore{blobs: map[string]hsm.Blob{}}
}

// PutBlob stores b; hsm.ErrKeyExists if the name is taken.
func (m *MemBlobStore) PutBlob(_ context.Context, b hsm.Blob) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[b.Name]; ok {
		return fmt.Errorf("memblobs: %q: %w", b.Name, hsm.ErrKeyExists)
	}
	m.blobs[b.Name] = clone(b)
	return nil
}

// GetBlob returns the named blob; hsm.ErrKeyNotFound if absent.
func (m *MemBlobStore) GetBlob(_ context.Context, name string) (hsm.Blob, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[name]
	if !ok {
		return hsm.Blob{}, fmt.Errorf("memblobs: %q: %w", name, hsm.ErrKeyNotFound)
	}
	return clone(b), nil
}

// ListBlobs returns every blob, by name.
func (m *MemBlobStore) ListBlobs(context.Context) ([]hsm.Blob, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]hsm.Blob, 0, len(m.blobs))
	for _, b := range m.blobs {
		out = append(out, clone(b))
	}
	slices.SortFunc(out, func(a, b hsm.Blob) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DeleteBlob deletes the named blob; hsm.ErrKeyNotFound if absent.
func (m *MemBlobStore) DeleteBlob(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[name]; !ok {
		return fmt.Errorf("memblobs: %q: %w", name, hsm.ErrKeyNotFound)
	}
	delete(m.blobs, name)
	return nil
}

// Tamper lets a test rewrite a stored blob in place (as an attacker with
// database access could).
func (m *MemBlobStore) Tamper(name string, fn func(*hsm.Blob)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.blobs[name]
	fn(&b)
	m.blobs[name] = b
}

func clone(b hsm.Blob) hsm.Blob {
	b.PublicDER = slices.Clone(b.PublicDER)
	b.Sealed = slices.Clone(b.Sealed)
	return b
}
