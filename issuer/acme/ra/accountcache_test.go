package ra

import (
	"fmt"
	"testing"

	"github.com/sigil-ca/sigil/storage"
)

func TestAccountCache(t *testing.T) {
	obj := func(id string, version int64) *storage.ACMEObject {
		return &storage.ACMEObject{Kind: kindAccount, ID: id, Version: version, Status: StatusValid}
	}
	t.Run("hit returns a copy", func(t *testing.T) {
		c := newAccountCache()
		_, gen := c.get("a")
		c.put(obj("a", 1), gen)
		o, _ := c.get("a")
		if o == nil || o.Version != 1 {
			t.Fatalf("get after put: %+v", o)
		}
		o.Version, o.Status = 9, StatusDeactivated // what saveAccount does to its copy
		if again, _ := c.get("a"); again.Version != 1 || again.Status != StatusValid {
			t.Fatalf("a caller's change reached the cache: %+v", again)
		}
	})
	t.Run("write forgets", func(t *testing.T) {
		c := newAccountCache()
		_, gen := c.get("a")
		c.put(obj("a", 1), gen)
		c.written("a")
		if o, _ := c.get("a"); o != nil {
			t.Fatalf("cached after a write: %+v", o)
		}
	})
	t.Run("a read older than a write is not cached", func(t *testing.T) {
		c := newAccountCache()
		_, gen := c.get("a") // a reader misses and goes to storage…
		c.written("a")       // …a write commits meanwhile…
		c.put(obj("a", 1), gen)
		if o, _ := c.get("a"); o != nil {
			t.Fatalf("the reader's stale copy was cached: %+v", o)
		}
		_, gen = c.get("a") // a read after the write is cached
		c.put(obj("a", 2), gen)
		if o, _ := c.get("a"); o == nil || o.Version != 2 {
			t.Fatalf("fresh read: %+v", o)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		c := newAccountCache()
		for i := range accountCacheSize + 100 {
			_, gen := c.get("x")
			c.put(obj(fmt.Sprint(i), 1), gen)
		}
		if n := len(c.m); n > accountCacheSize {
			t.Fatalf("%d entries, bound %d", n, accountCacheSize)
		}
		if o, _ := c.get(fmt.Sprint(accountCacheSize + 99)); o == nil {
			t.Fatal("the latest entry was not kept")
		}
	})
}
