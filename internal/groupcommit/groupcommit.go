// Package groupcommit batches durable writes: concurrent callers queue
// items, one of them (the leader) commits everything queued in a single
// transaction, and each caller returns only once the transaction holding
// its item has committed. N concurrent writes then cost one BEGIN/COMMIT
// (one WAL burst on SQLite, one fsync on PostgreSQL) instead of N, with
// durability unchanged. A batch that fails is retried one item per
// transaction, so a bad item fails only its own caller.
package groupcommit

import (
	"context"
	"fmt"
	"sync"
)

// Committer queues items of type T. The zero value is not usable; use New.
type Committer[T any] struct {
	batch   func(ctx context.Context, items []T) error
	one     func(ctx context.Context, item T) error
	max     int
	onPanic func(recovered any)

	mu      sync.Mutex
	pending []*pending[T]
	leading bool // a goroutine is writing batches
}

type pending[T any] struct {
	item T
	done chan error // buffered: the writer never blocks on a caller that left
}

// New returns a Committer. batch writes items in one transaction (all or
// nothing); one writes a single item in its own transaction and is used
// after a batch fails (nil: batch with one item). max bounds a batch.
// onPanic, if set, hears of a panic in a background writer (the batch's
// callers get an error).
func New[T any](max int, batch func(context.Context, []T) error, one func(context.Context, T) error, onPanic func(any)) *Committer[T] {
	if max < 1 {
		max = 1
	}
	if one == nil {
		one = func(ctx context.Context, item T) error { return batch(ctx, []T{item}) }
	}
	return &Committer[T]{batch: batch, one: one, max: max, onPanic: onPanic}
}

// Do writes item and returns once it is committed (nil) or has failed. If
// ctx ends first the caller gets ctx's error; the item may still commit.
func (c *Committer[T]) Do(ctx context.Context, item T) error {
	p := &pending[T]{item: item, done: make(chan error, 1)}
	c.mu.Lock()
	c.pending = append(c.pending, p)
	lead := !c.leading
	c.leading = true
	c.mu.Unlock()
	if lead {
		// Write one batch (ours is in it), then hand the rest, if any, to
		// a goroutine so this caller's latency is one batch, not a backlog.
		if c.writeBatch(context.WithoutCancel(ctx)) {
			go c.drain(context.WithoutCancel(ctx))
		}
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain writes batches until the queue is empty. It runs on its own
// goroutine, so a panic must not end the process: writeBatch has failed
// that batch's items, and drain reports it and carries on.
func (c *Committer[T]) drain(ctx context.Context) {
	for {
		more, panicked := c.writeBatchRecovering(ctx)
		if panicked {
			c.mu.Lock()
			more = len(c.pending) > 0 && !c.leading
			c.leading = c.leading || more
			c.mu.Unlock()
		}
		if !more {
			return
		}
	}
}

func (c *Committer[T]) writeBatchRecovering(ctx context.Context) (more, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			if c.onPanic != nil {
				c.onPanic(r)
			}
			more, panicked = false, true
		}
	}()
	return c.writeBatch(ctx), false
}

// writeBatch takes up to max queued items and writes them. It reports
// whether items remain queued; if none do, it gives up the leadership. A
// panic fails every item of the batch, gives up leadership (so the next
// caller leads) and is re-raised.
func (c *Committer[T]) writeBatch(ctx context.Context) (more bool) {
	c.mu.Lock()
	n := min(len(c.pending), c.max)
	batch := c.pending[:n:n]
	c.pending = c.pending[n:]
	c.mu.Unlock()
	finished := false
	defer func() {
		if finished {
			return
		}
		r := recover()
		for _, p := range batch {
			select {
			case p.done <- fmt.Errorf("groupcommit: write panicked: %v", r):
			default:
			}
		}
		c.mu.Lock()
		c.leading = false
		c.mu.Unlock()
		panic(r)
	}()
	if len(batch) > 0 {
		c.commit(ctx, batch)
	}
	c.mu.Lock()
	more = len(c.pending) > 0
	if !more {
		c.leading = false
	}
	c.mu.Unlock()
	finished = true
	return more
}

// commit writes batch in one transaction, falling back to one transaction
// per item if that fails, and delivers each item's outcome.
func (c *Committer[T]) commit(ctx context.Context, batch []*pending[T]) {
	items := make([]T, len(batch))
	for i, p := range batch {
		items[i] = p.item
	}
	err := c.batch(ctx, items)
	if err == nil || len(batch) == 1 {
		for _, p := range batch {
			p.done <- err
		}
		return
	}
	for _, p := range batch {
		p.done <- c.one(ctx, p.item)
	}
}
