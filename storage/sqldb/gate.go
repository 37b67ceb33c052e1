package sqldb

import (
	"context"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// SQLite allows one writer at a time and makes the others wait in a
// sleep-and-retry busy handler, which wastes most of the time under
// contention. A store whose dialect serialises writers therefore queues its
// own writers on an in-process gate instead (FIFO-ish and without sleeps);
// busy_timeout still arbitrates against other processes. A transaction
// holds the gate from begin to end, so writes inside InTx do not take it.

// gateWait bounds a wait for the gate, so a caller that deadlocks itself
// (a write through the Store's repositories inside InTx) gets an error.
const gateWait = 30 * time.Second

func (s *Store) acquire(ctx context.Context) error {
	if s.gate == nil {
		return nil
	}
	select {
	case s.gate <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(gateWait)
	defer t.Stop()
	select {
	case s.gate <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: waiting to write: %w", s.d.Name(), ctx.Err())
	case <-t.C:
		return fmt.Errorf("%s: waited %v to write (a write outside the open transaction?)", s.d.Name(), gateWait)
	}
}

func (s *Store) release() {
	if s.gate != nil {
		<-s.gate
	}
}

// write runs fn, a repository write, holding the write gate when there is
// one and no transaction holds it already.
func (r repos) write(ctx context.Context, fn func() error) error {
	if r.inTx {
		return fn()
	}
	if err := r.s.acquire(ctx); err != nil {
		return err
	}
	defer r.s.release()
	return fn()
}

// writeValue is write for writes that return a value.
func writeValue[T any](ctx context.Context, r repos, fn func() (T, error)) (T, error) {
	var v T
	err := r.write(ctx, func() error {
		var err error
		v, err = fn()
		return err
	})
	return v, err
}

// Public write methods: each takes the gate around its implementation.

func (s certs) Revoke(ctx context.Context, serial string, reason int, at time.Time) error {
	return s.r.write(ctx, func() error { return s.revoke(ctx, serial, reason, at) })
}

func (s certs) PruneExpired(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return writeValue(ctx, s.r, func() (int, error) { return s.pruneExpired(ctx, cutoff, limit) })
}

func (s leases) Put(ctx context.Context, l *storage.Lease) error {
	return s.r.write(ctx, func() error { return s.put(ctx, l) })
}

func (s leases) Extend(ctx context.Context, id string, from, to time.Time) error {
	return s.r.write(ctx, func() error { return s.extend(ctx, id, from, to) })
}

func (s leases) Activate(ctx context.Context, id string, expiresAt time.Time) error {
	return s.r.write(ctx, func() error { return s.activate(ctx, id, expiresAt) })
}

func (s leases) StartRevoke(ctx context.Context, id string, now, claimUntil time.Time) error {
	return s.r.write(ctx, func() error { return s.startRevoke(ctx, id, now, claimUntil) })
}

func (s leases) ClaimDue(ctx context.Context, now, claimUntil time.Time, limit int) ([]*storage.Lease, error) {
	return writeValue(ctx, s.r, func() ([]*storage.Lease, error) { return s.claimDue(ctx, now, claimUntil, limit) })
}

func (s leases) SetState(ctx context.Context, id string, st storage.LeaseState, attempts int, nextAttempt time.Time, lastErr string) error {
	return s.r.write(ctx, func() error { return s.setState(ctx, id, st, attempts, nextAttempt, lastErr) })
}

func (s issuers) Put(ctx context.Context, is *storage.Issuer) error {
	return s.r.write(ctx, func() error { return s.put(ctx, is) })
}

func (s issuers) SetActive(ctx context.Context, id string, active bool) error {
	return s.r.write(ctx, func() error { return s.setActive(ctx, id, active) })
}

func (s issuers) NextCRLNumber(ctx context.Context, id string) (int64, error) {
	return writeValue(ctx, s.r, func() (int64, error) { return s.nextCRLNumber(ctx, id) })
}

func (s keyBlobs) Put(ctx context.Context, k *storage.KeyBlob) error {
	return s.r.write(ctx, func() error { return s.put(ctx, k) })
}

func (s keyring) Put(ctx context.Context, sealed []byte, prevVersion int64) (int64, error) {
	return writeValue(ctx, s.r, func() (int64, error) { return s.put(ctx, sealed, prevVersion) })
}

func (s tokens) Put(ctx context.Context, t *storage.Token) error {
	return s.r.write(ctx, func() error { return s.put(ctx, t) })
}

func (s tokens) Delete(ctx context.Context, id string) error {
	return s.r.write(ctx, func() error { return s.delete(ctx, id) })
}

func (s tokens) Use(ctx context.Context, id string) error {
	return s.r.write(ctx, func() error { return s.use(ctx, id) })
}

func (s tokens) Extend(ctx context.Context, id string, expiresAt time.Time) error {
	return s.r.write(ctx, func() error { return s.extend(ctx, id, expiresAt) })
}

func (s mounts) Put(ctx context.Context, m *storage.Mount) error {
	return s.r.write(ctx, func() error { return s.put(ctx, m) })
}

func (s mounts) Delete(ctx context.Context, path string) error {
	return s.r.write(ctx, func() error { return s.delete(ctx, path) })
}

func (s settings) PutIfAbsent(ctx context.Context, key string, value []byte) error {
	return s.r.write(ctx, func() error { return s.putIfAbsent(ctx, key, value) })
}

func (s settings) Put(ctx context.Context, key string, value []byte) error {
	return s.r.write(ctx, func() error { return s.put(ctx, key, value) })
}

func (s settings) Delete(ctx context.Context, key string) error {
	return s.r.write(ctx, func() error { return s.delete(ctx, key) })
}

func (s keyBlobs) Delete(ctx context.Context, name string) error {
	return s.r.write(ctx, func() error { return s.delete(ctx, name) })
}

func (s keyBlobs) ReplaceSealed(ctx context.Context, name string, old, new []byte) error {
	return s.r.write(ctx, func() error { return s.replaceSealed(ctx, name, old, new) })
}

func (s settings) Replace(ctx context.Context, key string, old, new []byte) error {
	return s.r.write(ctx, func() error { return s.replace(ctx, key, old, new) })
}

func (s mounts) ReplaceSealed(ctx context.Context, path string, old, new []byte) error {
	return s.r.write(ctx, func() error { return s.replaceSealed(ctx, path, old, new) })
}

func (s leases) ReplaceSealed(ctx context.Context, id string, old, new []byte) error {
	return s.r.write(ctx, func() error { return s.replaceSealed(ctx, id, old, new) })
}

func (s leases) ReleaseClaims(ctx context.Context) (int, error) {
	return writeValue(ctx, s.r, func() (int, error) { return s.releaseClaims(ctx) })
}
