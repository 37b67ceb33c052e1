package ra

import (
	"sync"

	"github.com/sigil-ca/sigil/storage"
)

// accountCacheSize bounds the accounts kept in memory (about 1 KiB each).
const accountCacheSize = 4096

// accountCache keeps the stored account objects the RA read, so a JWS
// POST (which names its account by kid) costs no storage read. It is used
// only with Config.SingleNode: every write of an account then goes through
// this RA, which drops the cached copy once the write has committed.
//
// The generation closes the race between a reader and a writer: a reader
// notes the generation before it reads storage and caches what it read
// only if no write of an account committed meanwhile, so a copy read
// before a write can never be cached after it.
type accountCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[string]*storage.ACMEObject // by account id
}

func newAccountCache() *accountCache {
	return &accountCache{m: make(map[string]*storage.ACMEObject)}
}

// get returns a copy of the cached object (nil if absent) and the
// generation to pass to put.
func (c *accountCache) get(id string) (*storage.ACMEObject, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.m[id]
	if o == nil {
		return nil, c.gen
	}
	cp := *o
	return &cp, c.gen
}

// put caches a copy of o, read from storage under generation gen, unless an
// account write committed since.
func (c *accountCache) put(o *storage.ACMEObject, gen uint64) {
	cp := *o
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.m) >= accountCacheSize {
		// Drop an arbitrary entry: a miss costs one read, as without the
		// cache.
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[o.ID] = &cp
}

// written forgets id after a write of it committed (or may have).
func (c *accountCache) written(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.m, id)
}
