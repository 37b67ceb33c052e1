package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// rewrapStats counts what a rewrap did.
type rewrapStats struct{ rewrapped, current int64 }

// rewrap re-encrypts every sealed value Sigil stores under the barrier's
// newest data key, each with a compare-and-swap so a concurrent writer on
// another node is never overwritten with stale data. Adding a kind of
// sealed value means adding it here.
func (s *Server) rewrap(ctx context.Context) (rewrapStats, error) {
	var st rewrapStats
	one := func(kind, id string, sealed []byte, swap func(old, new []byte) error) error {
		if !s.barrier.NeedsRewrap(sealed) {
			st.current++
			return nil
		}
		fresh, err := s.barrier.Rewrap(ctx, kind, id, sealed)
		if err != nil {
			return fmt.Errorf("rewrap %s %q: %w", kind, id, err)
		}
		if err := swap(sealed, fresh); err != nil && !errors.Is(err, storage.ErrConflict) {
			return fmt.Errorf("store rewrapped %s %q: %w", kind, id, err)
		}
		// On a conflict someone else rewrote it meanwhile, with the current key.
		st.rewrapped++
		return nil
	}
	blobs, err := s.store.KeyBlobs().List(ctx)
	if err != nil {
		return st, err
	}
	for _, b := range blobs {
		name := b.Name
		if err := one(hsm.SoftKeyKind, name, b.Sealed, func(old, new []byte) error {
			return s.store.KeyBlobs().ReplaceSealed(ctx, name, old, new)
		}); err != nil {
			return st, err
		}
	}
	for _, key := range sealedSettings() {
		v, err := s.store.Settings().Get(ctx, key)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return st, err
		}
		if err := one(auth.SettingKind, key, v, func(old, new []byte) error {
			return s.store.Settings().Replace(ctx, key, old, new)
		}); err != nil {
			return st, err
		}
	}
	dataKeys, err := s.store.Settings().List(ctx, engines.DataSettingPrefix)
	if err != nil {
		return st, err
	}
	for _, key := range dataKeys {
		v, err := s.store.Settings().Get(ctx, key)
		if errors.Is(err, storage.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return st, err
		}
		if err := one(engines.DataSealKind, engines.DataSealID(key), v, func(old, new []byte) error {
			return s.store.Settings().Replace(ctx, key, old, new)
		}); err != nil {
			return st, err
		}
	}
	mounts, err := s.store.Mounts().List(ctx)
	if err != nil {
		return st, err
	}
	for _, m := range mounts {
		if len(m.SealedConfig) == 0 {
			continue
		}
		path := m.Path
		if err := one(engines.SealKind, path, m.SealedConfig, func(old, new []byte) error {
			return s.store.Mounts().ReplaceSealed(ctx, path, old, new)
		}); err != nil {
			return st, err
		}
	}
	// Leases are paged, never loaded all at once.
	for after := ""; ; {
		page, next, err := s.store.Leases().List(ctx, storage.LeaseFilter{After: after, Limit: 1000})
		if err != nil {
			return st, err
		}
		for _, l := range page {
			if len(l.SealedRevocation) == 0 {
				continue
			}
			id := l.ID
			if err := one(lease.SealKind, id, l.SealedRevocation, func(old, new []byte) error {
				return s.store.Leases().ReplaceSealed(ctx, id, old, new)
			}); err != nil {
				return st, err
			}
		}
		if next == "" {
			return st, nil
		}
		after = next
	}
}
