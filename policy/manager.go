package policy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Store persists policy documents by name. storage.Policies satisfies it;
// Get and Delete return an error matching storage.ErrNotFound for a missing
// name, which Manager passes on wrapped.
type Store interface {
	Put(ctx context.Context, name string, document []byte) error
	Get(ctx context.Context, name string) ([]byte, error)
	List(ctx context.Context) (map[string][]byte, error)
	Delete(ctx context.Context, name string) error
}

// DefaultCacheTTL is how long a Manager serves its Engine before reloading
// from the store. Writes through a Manager take effect on its own node at
// once; this bounds how stale another node sharing the database can be.
const DefaultCacheTTL = 5 * time.Second

// Manager validates and stores policies and serves the Engine built from
// them. It is safe for concurrent use.
type Manager struct {
	store Store
	ttl   time.Duration
	now   func() time.Time

	mu       sync.Mutex
	engine   *Engine
	loadedAt time.Time
	gen      uint64 // bumped by every local write; a load started before one is not cached
}

// NewManager returns a Manager over store. A ttl <= 0 means
// DefaultCacheTTL.
func NewManager(store Store, ttl time.Duration) *Manager {
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	return &Manager{store: store, ttl: ttl, now: time.Now}
}

// Put validates document and stores it under name, replacing any previous
// version. An invalid document is never stored.
func (m *Manager) Put(ctx context.Context, name string, document []byte) (*Policy, error) {
	p, err := Parse(name, document)
	if err != nil {
		return nil, err
	}
	if err := m.store.Put(ctx, name, document); err != nil {
		return nil, fmt.Errorf("policy %q: store: %w", name, err)
	}
	m.invalidate()
	return p, nil
}

// Get returns the stored document.
func (m *Manager) Get(ctx context.Context, name string) ([]byte, error) {
	doc, err := m.store.Get(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("policy %q: %w", name, err)
	}
	return doc, nil
}

// List returns the names of the stored policies, sorted.
func (m *Manager) List(ctx context.Context) ([]string, error) {
	docs, err := m.store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("policies: list: %w", err)
	}
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// Delete removes a policy. Its holders lose its grants at once on this node
// and within the cache TTL on others.
func (m *Manager) Delete(ctx context.Context, name string) error {
	if err := m.store.Delete(ctx, name); err != nil {
		return fmt.Errorf("policy %q: delete: %w", name, err)
	}
	m.invalidate()
	return nil
}

func (m *Manager) invalidate() {
	m.mu.Lock()
	m.engine = nil
	m.gen++
	m.mu.Unlock()
}

// Engine returns the engine for the stored policies, reloading them when
// the cached one is older than the TTL or a write went through this
// Manager. A stored document that no longer parses grants nothing and is
// reported by Engine.Invalid; a store error is returned, so callers deny.
func (m *Manager) Engine(ctx context.Context) (*Engine, error) {
	m.mu.Lock()
	if m.engine != nil && m.now().Sub(m.loadedAt) < m.ttl {
		e := m.engine
		m.mu.Unlock()
		return e, nil
	}
	gen := m.gen
	m.mu.Unlock()

	// Load outside the lock: concurrent callers may load twice, which is
	// cheaper than making every request wait behind one slow query.
	start := m.now()
	docs, err := m.store.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("policies: load: %w", err)
	}
	var ps []*Policy
	invalid := map[string]error{}
	for name, doc := range docs {
		p, err := Parse(name, doc)
		if err != nil {
			invalid[name] = err
			continue
		}
		ps = append(ps, p)
	}
	e, err := NewEngine(ps...)
	if err != nil {
		return nil, err // unreachable: names are unique keys
	}
	e.invalid = invalid

	m.mu.Lock()
	if m.gen == gen {
		m.engine, m.loadedAt = e, start
	}
	m.mu.Unlock()
	return e, nil
}
