// Package flock takes exclusive advisory locks on files with flock(2), the
// kind the kernel drops when the holder dies. It is the one place Sigil
// uses file locks: the server's data-directory lock and SQLite's migration
// lock.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

var (
	// ErrLocked is returned by TryAcquire when another holder has the lock.
	ErrLocked = errors.New("flock: held by another holder")
	// ErrUnsupported is returned where flock(2) does not exist.
	ErrUnsupported = errors.New("flock: file locks are not supported on this platform")
)

// pollInterval is how often Acquire retries a held lock.
const pollInterval = 20 * time.Millisecond

// Lock is a held lock. Closing its file releases it.
type Lock struct{ f *os.File }

// File is the locked file, open read-write (e.g. to record the holder).
func (l *Lock) File() *os.File { return l.f }

// Release releases the lock; it is safe on a nil or released Lock.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Close() // closing the descriptor drops the flock
	l.f = nil
}

// TryAcquire takes the lock on path (created 0600 if absent) or fails at
// once, with an error wrapping ErrLocked if another holder has it.
func TryAcquire(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := tryLock(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Acquire takes the lock on path, waiting while another holder has it,
// until ctx is done.
func Acquire(ctx context.Context, path string) (*Lock, error) {
	for {
		l, err := TryAcquire(path)
		if !errors.Is(err, ErrLocked) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}
