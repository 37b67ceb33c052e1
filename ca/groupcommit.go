package ca

import (
	"context"
	"fmt"
	"sync"

	"github.com/sigil-ca/sigil/storage"
)

// Group commit of inventory records. Concurrent issuances queue their
// records; one of them (the leader) writes everything queued in a single
// transaction, so N certificates cost one BEGIN/COMMIT (one WAL write burst
// on SQLite, one fsync on PostgreSQL) instead of N. Durability is
// unchanged: every caller gets its certificate only after the transaction
// holding its record has committed. A batch that fails is retried one
// record per transaction, so a bad record (a serial conflict, an aborted
// hook) fails only its own issuance.

// maxBatch bounds the records written in one transaction.
const maxBatch = 64

type recordQueue struct {
	mu      sync.Mutex
	pending []*pendingRecord
	leading bool // a goroutine is writing batches
}

type pendingRecord struct {
	rec  *storage.Certificate
	done chan error // buffered: the writer never blocks on a caller that left
}

// record stores rec in the inventory and returns once it is committed (nil)
// or has failed. If ctx ends first the caller gets ctx's error; the record
// may still commit, which leaves a certificate in the inventory that was
// never returned, never the reverse.
func (a *Authority) record(ctx context.Context, rec *storage.Certificate) error {
	p := &pendingRecord{rec: rec, done: make(chan error, 1)}
	q := &a.inventory
	q.mu.Lock()
	q.pending = append(q.pending, p)
	lead := !q.leading
	q.leading = true
	q.mu.Unlock()
	if lead {
		// Write one batch (ours is in it), then hand the rest, if any, to
		// a goroutine so this caller's latency is one batch, not a backlog.
		if a.writeBatch(context.WithoutCancel(ctx)) {
			go a.drain(context.WithoutCancel(ctx))
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
// goroutine, so a panic (a storage bug, or the test hook) must not end the
// process: writeBatch has failed that batch's records, and drain logs it and
// carries on with the rest.
func (a *Authority) drain(ctx context.Context) {
	for {
		more, panicked := a.writeBatchRecovering(ctx)
		if panicked {
			q := &a.inventory
			q.mu.Lock()
			more = len(q.pending) > 0 && !q.leading
			q.leading = q.leading || more
			q.mu.Unlock()
		}
		if !more {
			return
		}
	}
}

func (a *Authority) writeBatchRecovering(ctx context.Context) (more, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			a.log.Error("ca: recording certificates panicked; their issuances failed", "panic", r)
			more, panicked = false, true
		}
	}()
	return a.writeBatch(ctx), false
}

// writeBatch takes up to maxBatch queued records and writes them. It
// reports whether records remain queued; if none do, it gives up the
// leadership. A panic inside fails every record of the batch, gives up
// leadership (so the next caller leads) and is re-raised.
func (a *Authority) writeBatch(ctx context.Context) (more bool) {
	q := &a.inventory
	q.mu.Lock()
	n := min(len(q.pending), maxBatch)
	batch := q.pending[:n:n]
	q.pending = q.pending[n:]
	q.mu.Unlock()
	finished := false
	defer func() {
		if finished {
			return
		}
		r := recover()
		for _, p := range batch {
			select {
			case p.done <- fmt.Errorf("recording certificate %s: panic: %v", p.rec.Serial, r):
			default:
			}
		}
		q.mu.Lock()
		q.leading = false
		q.mu.Unlock()
		panic(r)
	}()
	if len(batch) > 0 {
		a.commit(ctx, batch)
	}
	q.mu.Lock()
	more = len(q.pending) > 0
	if !more {
		q.leading = false
	}
	q.mu.Unlock()
	finished = true
	return more
}

// commit writes batch in one transaction, falling back to one transaction
// per record if that fails, and delivers each record's outcome.
func (a *Authority) commit(ctx context.Context, batch []*pendingRecord) {
	err := a.store.InTx(ctx, func(tx storage.Repos) error {
		for _, p := range batch {
			if err := a.put(ctx, tx, p.rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(batch) == 1 {
		for _, p := range batch {
			p.done <- err
		}
		return
	}
	for _, p := range batch {
		p.done <- a.store.InTx(ctx, func(tx storage.Repos) error { return a.put(ctx, tx, p.rec) })
	}
}

func (a *Authority) put(ctx context.Context, tx storage.Repos, rec *storage.Certificate) error {
	const op = "sign"
	if err := tx.Certificates().Put(ctx, rec); err != nil {
		return errf(KindInternal, op, err, "recording certificate %s", rec.Serial)
	}
	if a.afterPut != nil {
		if err := a.afterPut(rec); err != nil {
			return errf(KindInternal, op, err, "issuance aborted")
		}
	}
	return nil
}
