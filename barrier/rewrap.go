package barrier

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// A Rewrapper lists the values one owner stores sealed under one kind, so
// RewrapAll can move them to the active key without a central list of every
// sealed column. The method uses only unnamed types, so an owner implements
// it without importing this package.
type Rewrapper interface {
	// EachSealed calls visit once per stored value with the record id it is
	// sealed under, its ciphertext, and a compare-and-swap that stores new
	// only if the value still equals old. swap returns nil, not an error,
	// when the value changed or vanished meanwhile: whoever changed it
	// sealed it afresh, so it needs no rewrap. EachSealed stops at the
	// first error visit returns and returns it.
	EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error
}

// RewrapStats counts what RewrapAll did. Rewrapped includes values another
// writer replaced while they were being rewrapped.
type RewrapStats struct {
	Rewrapped int64
	Current   int64
}

// rewrapRegistry holds the registered rewrappers and the kinds this
// barrier has sealed, so a kind without a rewrapper shows up.
type rewrapRegistry struct {
	mu     sync.Mutex
	byKind map[string][]Rewrapper
	// sealed records each kind Seal was called with: a sync.Map because
	// it is read on every Seal and written once per kind.
	sealed sync.Map
}

// RegisterRewrapper adds r as a source of values sealed under kind. One kind
// may have several sources (sealed settings have more than one owner).
// Register each source once, when the barrier is built.
func (b *Barrier) RegisterRewrapper(kind string, r Rewrapper) {
	b.rewrap.mu.Lock()
	defer b.rewrap.mu.Unlock()
	if b.rewrap.byKind == nil {
		b.rewrap.byKind = map[string][]Rewrapper{}
	}
	b.rewrap.byKind[kind] = append(b.rewrap.byKind[kind], r)
}

// RewrapKinds lists the kinds that have a registered rewrapper, sorted.
func (b *Barrier) RewrapKinds() []string {
	b.rewrap.mu.Lock()
	defer b.rewrap.mu.Unlock()
	kinds := make([]string, 0, len(b.rewrap.byKind))
	for k := range b.rewrap.byKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	return kinds
}

// UnregisteredKinds lists, sorted, the kinds this barrier sealed a value
// under since it was created that no rewrapper covers: values RewrapAll
// would leave under an old key.
func (b *Barrier) UnregisteredKinds() []string {
	b.rewrap.mu.Lock()
	defer b.rewrap.mu.Unlock()
	var out []string
	b.rewrap.sealed.Range(func(k, _ any) bool {
		if _, ok := b.rewrap.byKind[k.(string)]; !ok {
			out = append(out, k.(string))
		}
		return true
	})
	slices.Sort(out)
	return out
}

// SealedKinds lists, sorted, the kinds this barrier sealed a value under
// since it was created.
func (b *Barrier) SealedKinds() []string {
	var out []string
	b.rewrap.sealed.Range(func(k, _ any) bool {
		out = append(out, k.(string))
		return true
	})
	slices.Sort(out)
	return out
}

func (b *Barrier) noteSealed(kind string) {
	if _, ok := b.rewrap.sealed.Load(kind); !ok {
		b.rewrap.sealed.Store(kind, struct{}{})
	}
}

// RewrapAll re-encrypts every value of every registered source under the
// active key, each with the source's compare-and-swap so a concurrent
// writer on another node is never overwritten with stale data. Kinds run
// in sorted order, so a failure is reproducible.
func (b *Barrier) RewrapAll(ctx context.Context) (RewrapStats, error) {
	b.rewrap.mu.Lock()
	kinds := make([]string, 0, len(b.rewrap.byKind))
	for k := range b.rewrap.byKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	sources := make([][]Rewrapper, len(kinds))
	for i, k := range kinds {
		sources[i] = slices.Clone(b.rewrap.byKind[k])
	}
	b.rewrap.mu.Unlock()

	var st RewrapStats
	for i, kind := range kinds {
		for _, src := range sources[i] {
			err := src.EachSealed(ctx, func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error {
				if !b.NeedsRewrap(sealed) {
					st.Current++
					return nil
				}
				fresh, err := b.Rewrap(ctx, kind, id, sealed)
				if err != nil {
					return fmt.Errorf("rewrap %s %q: %w", kind, id, err)
				}
				if err := swap(ctx, sealed, fresh); err != nil {
					return fmt.Errorf("store rewrapped %s %q: %w", kind, id, err)
				}
				st.Rewrapped++
				return nil
			})
			if err != nil {
				return st, err
			}
		}
	}
	return st, nil
}
