package ca

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sigil-ca/sigil/storage"
)

// TestFaultInjection kills the issuing path after the certificate is
// signed and recorded but before the transaction commits: the certificate
// must then never be returned and the inventory must not hold it; every
// certificate that is returned must be in the inventory.
func TestFaultInjection(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	a := e.ca
	crash := errors.New("injected crash")

	t.Run("error", func(t *testing.T) {
		n := countCerts(t, e.store)
		var signed *storage.Certificate
		a.afterPut = func(rec *storage.Certificate) error { signed = rec; return crash }
		defer func() { a.afterPut = nil }()
		iss, err := a.Sign(ctx, SignRequest{CSR: serverCSR(t, "a.example.test")})
		if iss != nil || !errors.Is(err, crash) {
			t.Fatalf("got %v, %v", iss, err)
		}
		if signed == nil || len(signed.DER) == 0 {
			t.Fatal("hook did not run after signing")
		}
		if _, err := e.store.Certificates().Get(ctx, signed.Serial); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("aborted certificate is in the inventory: %v", err)
		}
		if countCerts(t, e.store) != n {
			t.Fatal("inventory changed")
		}
	})

	t.Run("panic", func(t *testing.T) {
		n := countCerts(t, e.store)
		a.afterPut = func(*storage.Certificate) error { panic("power cut") }
		defer func() { a.afterPut = nil }()
		var iss *Issued
		func() {
			defer func() {
				if recover() == nil {
					t.Fatal("panic swallowed")
				}
			}()
			iss, _ = a.Sign(ctx, SignRequest{CSR: serverCSR(t, "a.example.test")})
		}()
		if iss != nil || countCerts(t, e.store) != n {
			t.Fatal("certificate escaped a crash")
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		n := countCerts(t, e.store)
		var calls atomic.Int64
		a.afterPut = func(*storage.Certificate) error {
			if calls.Add(1)%2 == 0 {
				return crash
			}
			return nil
		}
		defer func() { a.afterPut = nil }()
		var mu sync.Mutex
		var returned []*Issued
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 5; j++ {
					iss, err := a.Sign(ctx, SignRequest{CSR: serverCSR(t, "c.example.test")})
					if err != nil {
						if !errors.Is(err, crash) {
							t.Error(err)
						}
						continue
					}
					mu.Lock()
					returned = append(returned, iss)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for _, iss := range returned {
			if _, err := e.store.Certificates().Get(ctx, iss.Record.Serial); err != nil {
				t.Fatalf("returned certificate %s not in inventory: %v", iss.Record.Serial, err)
			}
		}
		if got := countCerts(t, e.store) - n; got != len(returned) {
			t.Fatalf("inventory grew by %d, %d certificates returned", got, len(returned))
		}
		if len(returned) == 0 || len(returned) == 40 {
			t.Fatalf("%d of 40 returned: the hook did not alternate", len(returned))
		}
	})
}
