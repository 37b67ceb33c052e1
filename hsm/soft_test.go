package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/internal/pausepoint"
)

// ringStore is an in-memory barrier.KeyringStore.
type ringStore struct {
	mu     sync.Mutex
	sealed []byte
	ver    int64
}

func (r *ringStore) Load(context.Context) ([]byte, int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ver == 0 {
		return nil, 0, barrier.ErrNotFound
	}
	return bytes.Clone(r.sealed), r.ver, nil
}

func (r *ringStore) Save(_ context.Context, sealed []byte, prev int64) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev != r.ver {
		return 0, barrier.ErrConflict
	}
	r.sealed, r.ver = bytes.Clone(sealed), r.ver+1
	return r.ver, nil
}

type softEnv struct {
	blobs  *hsmtest.MemBlobStore
	ring   *ringStore
	master []byte
}

func newSoftEnv(t testing.TB) *softEnv {
	t.Helper()
	e := &softEnv{blobs: hsmtest.NewMemBlobStore(), ring: &ringStore{}, master: make([]byte, barrier.MasterKeySize)}
	if _, err := rand.Read(e.master); err != nil {
		t.Fatal(err)
	}
	return e
}

// open starts a keystore the way a process start does: a new barrier
// unsealed with the master key over the persisted keyring.
func (e *softEnv) open(t testing.TB) (*hsm.Soft, *barrier.Barrier) {
	t.Helper()
	b := barrier.New(e.ring)
	if err := b.Unseal(context.Background(), e.master); err != nil {
		t.Fatal(err)
	}
	return hsm.NewSoft(e.blobs, b, nil), b
}

func TestSoftConformance(t *testing.T) {
	hsmtest.Run(t, func(t *testing.T) (hsm.Custody, func() hsm.Custody) {
		e := newSoftEnv(t)
		s, _ := e.open(t)
		return s, func() hsm.Custody {
			s, _ := e.open(t)
			return s
		}
	})
}

func TestSoftStoresOnlySealedKeys(t *testing.T) {
	ctx := context.Background()
	e := newSoftEnv(t)
	s, _ := e.open(t)
	for _, typ := range []hsm.KeyType{hsm.ECDSAP256, hsm.Ed25519} {
		name := "k-" + string(typ)
		if _, err := s.CreateKey(ctx, name, typ); err != nil {
			t.Fatal(err)
		}
		b, err := e.blobs.GetBlob(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x509.ParsePKCS8PrivateKey(b.Sealed); err == nil {
			t.Fatalf("%s: stored blob parses as a clear PKCS#8 key", typ)
		}
		// The sealed bytes must not contain the DER of the private key: find
		// it by opening through a barrier, then search the blob for it.
		br := barrier.New(e.ring)
		if err := br.Unseal(ctx, e.master); err != nil {
			t.Fatal(err)
		}
		der, err := br.Open(ctx, hsm.SoftKeyKind, name, b.Sealed)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b.Sealed, der[len(der)-32:]) {
			t.Fatalf("%s: private key bytes visible in the stored blob", typ)
		}
	}
}

func TestSoftTamperedBlobs(t *testing.T) {
	ctx := context.Background()
	e := newSoftEnv(t)
	s, _ := e.open(t)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := s.CreateKey(ctx, n, hsm.ECDSAP256); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := e.blobs.GetBlob(ctx, "a")
	c, _ := e.blobs.GetBlob(ctx, "c")
	// Copy a's sealed key into b's row: the barrier binds it to "a".
	e.blobs.Tamper("b", func(b *hsm.Blob) { b.Sealed = a.Sealed })
	// Give c a's public key: the check against the sealed key catches it.
	e.blobs.Tamper("c", func(b *hsm.Blob) { b.PublicDER = a.PublicDER })
	_ = c

	s2, _ := e.open(t) // fresh process: nothing cached
	if _, err := s2.Signer(ctx, "b"); !errors.Is(err, barrier.ErrIntegrity) {
		t.Errorf("Signer with a copied sealed key = %v, want barrier.ErrIntegrity", err)
	}
	if _, err := s2.Signer(ctx, "c"); err == nil {
		t.Error("Signer accepted a row whose public key does not match its sealed key")
	}
	if _, err := s2.Signer(ctx, "a"); err != nil {
		t.Errorf("untouched key: %v", err)
	}
}

func TestSoftSealedBarrier(t *testing.T) {
	ctx := context.Background()
	e := newSoftEnv(t)
	s, b := e.open(t)
	if _, err := s.CreateKey(ctx, "k", hsm.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	signer, err := s.Signer(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	b.Lock()
	if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, hsm.ErrSealed) {
		t.Errorf("Sign with a sealed barrier = %v, want ErrSealed", err)
	}
	if _, err := s.Signer(ctx, "k"); !errors.Is(err, hsm.ErrSealed) {
		t.Errorf("Signer with a sealed barrier = %v, want ErrSealed", err)
	}
	if _, err := s.CreateKey(ctx, "k2", hsm.ECDSAP256); !errors.Is(err, hsm.ErrSealed) {
		t.Errorf("CreateKey with a sealed barrier = %v, want ErrSealed", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, hsm.ErrSealed) {
		t.Errorf("Ping with a sealed barrier = %v, want ErrSealed", err)
	}
	// Public information stays readable while sealed.
	if _, err := s.Key(ctx, "k"); err != nil {
		t.Errorf("Key while sealed: %v", err)
	}
	if err := b.Unseal(ctx, e.master); err != nil {
		t.Fatal(err)
	}
	if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Errorf("Sign after unseal: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); err == nil {
		t.Error("Sign succeeded after Close")
	}
}

func BenchmarkSoftSign(b *testing.B) {
	ctx := context.Background()
	e := newSoftEnv(b)
	s, _ := e.open(b)
	if _, err := s.CreateKey(ctx, "bench", hsm.ECDSAP256); err != nil {
		b.Fatal(err)
	}
	signer, err := s.Signer(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("bench"))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := signer.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// pausingBlobs holds a blob read at its Point, between the read and its
// return.
type pausingBlobs struct {
	*hsmtest.MemBlobStore
	at pausepoint.Point
}

func (p *pausingBlobs) GetBlob(ctx context.Context, name string) (hsm.Blob, error) {
	b, err := p.MemBlobStore.GetBlob(ctx, name)
	p.at.Here()
	return b, err
}

// TestSoftDestroyRacingLoad: a signer whose key was being unsealed when
// the key was destroyed may finish that one signature (it began first),
// but the key must not stay cached: signing fails from then on.
func TestSoftDestroyRacingLoad(t *testing.T) {
	ctx := context.Background()
	e := newSoftEnv(t)
	blobs := &pausingBlobs{MemBlobStore: e.blobs}
	b := barrier.New(e.ring)
	if err := b.Unseal(ctx, e.master); err != nil {
		t.Fatal(err)
	}
	if _, err := hsm.NewSoft(e.blobs, b, nil).CreateKey(ctx, "doomed", hsm.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	// A fresh keystore, so the key is not cached yet.
	s := hsm.NewSoft(blobs, b, nil)
	t.Cleanup(func() { s.Close() })
	var signer crypto.Signer
	lerr, derr := blobs.at.Interleave(func() (err error) { signer, err = s.Signer(ctx, "doomed"); return err },
		func() error { return s.DestroyKey(ctx, "doomed") })
	if lerr != nil || derr != nil {
		t.Fatalf("the load that began before the destruction: %v; the destruction: %v", lerr, derr)
	}
	digest := sha256.Sum256([]byte("after"))
	if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("signing with a destroyed key = %v, want ErrKeyNotFound (the key was cached by a racing load)", err)
	}
}
