//go:build unix

package flock_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/flock"
)

// TestExclusive: a second holder is refused while the first holds the lock
// (flock locks are per open file description, so this holds within one
// process too), and gets it once the first releases.
func TestExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	first, err := flock.TryAcquire(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flock.TryAcquire(path); !errors.Is(err, flock.ErrLocked) {
		t.Fatalf("second TryAcquire: got %v, want ErrLocked", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := flock.Acquire(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire while held: got %v, want DeadlineExceeded", err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := flock.Acquire(t.Context(), path)
		l.Release()
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	first.Release()
	first.Release() // idempotent
	if err := <-got; err != nil {
		t.Fatalf("Acquire after release: %v", err)
	}
}

// TestTryAcquirePID: the holder's pid is recorded, and a refused caller
// gets it back with ErrLocked.
func TestTryAcquirePID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	first, holder, err := flock.TryAcquirePID(path)
	if err != nil || holder != "" {
		t.Fatalf("first: holder %q, err %v", holder, err)
	}
	defer first.Release()
	_, holder, err = flock.TryAcquirePID(path)
	if !errors.Is(err, flock.ErrLocked) || holder != strconv.Itoa(os.Getpid()) {
		t.Fatalf("second: holder %q, err %v; want our pid and ErrLocked", holder, err)
	}
}
