package lease

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/storage"
)

// Pruning of revoked leases runs when the expiry worker is idle, one batch
// of pruneBatch rows per turn (interleaved with expiry, so a backlog of a
// million revoked leases never holds expiry up), once nothing is left to
// prune at most every pruneInterval (or half the retention, if shorter).
const (
	pruneBatch    = 1000
	pruneInterval = time.Minute
)

// recordTimeout bounds the write of a batch's outcomes, which runs on its
// own context so outcomes of revocations that finished are kept even when
// the worker is stopping.
const recordTimeout = 10 * time.Second

// Start runs the expiry worker until ctx ends or Stop is called. It returns
// at once: start-up reads nothing, so a restart is ready immediately and
// leases that expired while the node was down are simply the first ones
// claimed. Calling Start on a running manager does nothing.
func (m *Manager) Start(ctx context.Context) {
	m.runMu.Lock()
	defer m.runMu.Unlock()
	if m.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	m.done = make(chan struct{})
	go m.run(ctx, m.done)
}

// Stop stops the worker and waits for in-flight revocations to end. The
// outcomes of revocations that finished are recorded and the claims on the
// rest released, so another node (or the next start) takes them up at once.
func (m *Manager) Stop() {
	m.runMu.Lock()
	cancel, done := m.cancel, m.done
	m.cancel, m.done = nil, nil
	m.runMu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (m *Manager) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTimer(0)
	defer t.Stop()
	var nextPrune time.Time // zero: at the first idle turn
	pruneEvery := min(pruneInterval, max(m.cfg.RevokedRetention/2, m.cfg.PollInterval))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// A full batch means more are due: go again at once.
		busy := m.sweep(ctx) >= m.cfg.BatchSize
		if !busy && m.cfg.RevokedRetention > 0 && !m.now().Before(nextPrune) && ctx.Err() == nil {
			if m.prune(ctx) >= pruneBatch {
				busy = true
			} else {
				nextPrune = m.now().Add(pruneEvery)
			}
		}
		if busy {
			t.Reset(0)
		} else {
			t.Reset(m.cfg.PollInterval)
		}
	}
}

// prune deletes one batch of leases revoked longer than RevokedRetention
// ago and returns how many it deleted.
func (m *Manager) prune(ctx context.Context) int {
	n, err := m.cfg.Store.Leases().PruneRevoked(ctx, m.now().Add(-m.cfg.RevokedRetention), pruneBatch)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("lease: prune revoked leases", "error", err)
		}
		return 0
	}
	if n > 0 {
		m.log.Debug("pruned revoked leases", "leases", n, "retention", m.cfg.RevokedRetention)
	}
	return n
}

// result kinds of one claimed lease.
const (
	resSkipped = iota // not attempted (stopping, or the claim too close to lapsing): release the claim
	resRevoked
	resFailed
)

// sweep claims one batch of due leases, revokes them with at most
// Concurrency in flight, and records every outcome in one storage
// transaction. It returns how many leases it claimed.
func (m *Manager) sweep(ctx context.Context) int {
	t := m.now()
	claimUntil := t.Add(m.cfg.ClaimTimeout)
	// The claim is not cut short by Stop: a claim that is made but whose
	// answer is lost would hold its leases until it lapses, whereas a batch
	// claimed during Stop is released again at once by record.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	batch, err := m.cfg.Store.Leases().ClaimDue(cctx, t, claimUntil, m.cfg.BatchSize)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("lease: claim due leases", "error", err)
		}
		return 0
	}
	if len(batch) == 0 {
		return 0
	}
	kinds := make([]uint8, len(batch))
	errs := make([]error, len(batch))
	m.revokeBatch(ctx, batch, claimUntil, kinds, errs)
	m.record(ctx, batch, kinds, errs)
	return len(batch)
}

// BatchRevoker is implemented by engines that revoke many secrets at once
// more cheaply than one by one (for example, deleting their records in one
// storage transaction instead of one each). The expiry worker hands such an
// engine every lease of its mount in a claimed batch in one call, bounded
// by WorkerRevokeTimeout; the result holds one error (nil: revoked) per revs
// entry, in order. Revocation must stay idempotent, as for Revoke.
type BatchRevoker interface {
	RevokeBatch(ctx context.Context, revs [][]byte) []error
}

// revokeTask is one unit of a batch's work: order[lo:hi] are indices into
// the batch, one lease, or all leases of a BatchRevoker's mount.
type revokeTask struct {
	lo, hi int
	eng    engines.Revoker
	br     BatchRevoker
	err    error // resolving the mount's engine failed
}

// revokeBatch revokes the claimed leases from min(Concurrency, tasks)
// worker goroutines, filling kinds and errs. Engines are resolved once per
// mount in the batch, not once per lease. A revocation starts only if it
// can end (WorkerRevokeTimeout) well before the claim lapses, so another node
// that takes the lease over after the lapse never revokes it while this
// one does.
func (m *Manager) revokeBatch(ctx context.Context, batch []*storage.Lease, claimUntil time.Time, kinds []uint8, errs []error) {
	tasks, order := m.plan(ctx, batch)
	margin := min(10*time.Second, (m.cfg.ClaimTimeout-m.cfg.WorkerRevokeTimeout)/2)
	startBy := claimUntil.Add(-m.cfg.WorkerRevokeTimeout - margin)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(m.cfg.Concurrency, len(tasks)) {
		wg.Go(func() {
			for {
				t := int(next.Add(1) - 1)
				if t >= len(tasks) || ctx.Err() != nil || m.now().After(startBy) {
					return // the rest stay resSkipped
				}
				m.runTask(ctx, &tasks[t], batch, order, kinds, errs)
			}
		})
	}
	wg.Wait()
}

// plan groups the batch into tasks: one per lease, except that the leases
// of a mount whose engine is a BatchRevoker form one task. The batch's
// mounts are resolved side by side, each within half of
// WorkerRevokeTimeout: building an engine can wait on its backend (a
// database engine connects), and one that does not answer must fail only
// its own leases (an attempt, with backoff), not hold the whole batch past
// its start deadline, batch after batch.
func (m *Manager) plan(ctx context.Context, batch []*storage.Lease) ([]revokeTask, []int) {
	type resolved struct {
		eng engines.Revoker
		br  BatchRevoker
		err error
		n   int // leases of the mount in the batch
	}
	engs := make(map[string]*resolved, 1)
	for _, l := range batch {
		r := engs[l.Mount]
		if r == nil {
			r = &resolved{}
			engs[l.Mount] = r
		}
		r.n++
	}
	rctx, cancel := context.WithTimeout(ctx, m.cfg.WorkerRevokeTimeout/2)
	var wg sync.WaitGroup
	for mount, r := range engs {
		wg.Go(func() {
			r.eng, r.err = m.cfg.Engines.Revoker(rctx, mount)
			if r.err == nil {
				r.br, _ = r.eng.(BatchRevoker)
			}
		})
	}
	wg.Wait()
	cancel()
	order := make([]int, 0, len(batch))
	tasks := make([]revokeTask, 0, len(batch))
	grouped := map[string]bool{}
	for i, l := range batch {
		r := engs[l.Mount]
		if r.br == nil {
			tasks = append(tasks, revokeTask{lo: len(order), hi: len(order) + 1, eng: r.eng, err: r.err})
			order = append(order, i)
			continue
		}
		if grouped[l.Mount] {
			continue
		}
		grouped[l.Mount] = true
		t := revokeTask{lo: len(order), eng: r.eng, br: r.br}
		for j := i; j < len(batch); j++ {
			if batch[j].Mount == l.Mount {
				order = append(order, j)
			}
		}
		t.hi = len(order)
		tasks = append(tasks, t)
	}
	return tasks, order
}

// runTask revokes one task's leases and records each lease's result kind.
func (m *Manager) runTask(ctx context.Context, t *revokeTask, batch []*storage.Lease, order []int, kinds []uint8, errs []error) {
	set := func(i int, err error) {
		switch {
		case err == nil:
			kinds[i] = resRevoked
		case ctx.Err() != nil:
			// Stopping: the failure may be the cancellation itself; release
			// the claim and let the next attempt decide.
		default:
			kinds[i], errs[i] = resFailed, err
		}
	}
	idx := order[t.lo:t.hi]
	if t.err != nil {
		for _, i := range idx {
			set(i, fmt.Errorf("lease: engine for %s: %w", batch[i].ID, t.err))
		}
		return
	}
	if t.br == nil {
		set(idx[0], m.revokeWith(ctx, t.eng, batch[idx[0]]))
		return
	}
	revs := make([][]byte, 0, len(idx))
	pos := make([]int, 0, len(idx)) // batch index of revs[k]
	for _, i := range idx {
		rev, err := m.cfg.Sealer.Open(ctx, SealKind, batch[i].ID, batch[i].SealedRevocation)
		if err != nil {
			set(i, fmt.Errorf("lease: open revocation data of %s: %w", batch[i].ID, err))
			continue
		}
		revs, pos = append(revs, rev), append(pos, i)
	}
	defer func() {
		for _, r := range revs {
			clear(r)
		}
	}()
	if len(revs) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, m.cfg.WorkerRevokeTimeout)
	res := t.br.RevokeBatch(rctx, revs)
	cancel()
	for k, i := range pos {
		var err error
		switch {
		case k < len(res):
			err = res[k]
		default:
			err = fmt.Errorf("lease: engine of %s returned %d results for %d revocations", batch[i].Mount, len(res), len(revs))
		}
		set(i, err)
	}
}

// revokeWith opens l's revocation data and runs eng's revocation, bounded
// by WorkerRevokeTimeout.
func (m *Manager) revokeWith(ctx context.Context, eng engines.Revoker, l *storage.Lease) error {
	rev, err := m.cfg.Sealer.Open(ctx, SealKind, l.ID, l.SealedRevocation)
	if err != nil {
		return fmt.Errorf("lease: open revocation data of %s: %w", l.ID, err)
	}
	defer clear(rev)
	rctx, cancel := context.WithTimeout(ctx, m.cfg.WorkerRevokeTimeout)
	defer cancel()
	return eng.Revoke(rctx, rev)
}

// record writes the batch's outcomes in one transaction: revoked; retry
// after exponential backoff; irrevocable after MaxAttempts; or, for a lease
// not attempted, its claim released unchanged. Each write is guarded by
// the claim, so nothing is recorded for a lease another node took over or
// a caller revoked meanwhile. If the write fails the claims lapse and the
// leases are attempted again, which idempotent revocation makes safe.
func (m *Manager) record(ctx context.Context, batch []*storage.Lease, kinds []uint8, errs []error) {
	out := make([]storage.LeaseOutcome, len(batch))
	t := m.now()
	for i, l := range batch {
		o := &out[i]
		o.ID, o.Claim = l.ID, l.ClaimedUntil
		switch kinds[i] {
		case resRevoked:
			o.State, o.Attempts = storage.LeaseRevoked, l.Attempts+1
			if l.State == storage.LeasePending {
				o.LastError = l.LastError // why its mint did not complete
			}
		case resFailed:
			o.Attempts = l.Attempts + 1
			o.LastError = truncate(errs[i].Error(), 1000)
			if o.Attempts >= m.cfg.MaxAttempts {
				o.State = storage.LeaseIrrevocable
			} else {
				o.State, o.NextAttempt = l.State, t.Add(m.backoff(o.Attempts))
			}
		default:
			o.State, o.Attempts, o.NextAttempt, o.LastError = l.State, l.Attempts, l.NextAttemptAt, l.LastError
		}
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	recorded, err := m.cfg.Store.Leases().SetStates(wctx, out)
	if err != nil {
		m.log.Error("lease: record expiry outcomes; the leases are retried when their claims lapse", "leases", len(out), "error", err)
		return
	}
	debug := m.log.Enabled(ctx, slog.LevelDebug)
	var revoked uint64
	for i := range out {
		if !recorded[i] {
			continue
		}
		o := &out[i]
		switch {
		case kinds[i] == resRevoked && batch[i].State == storage.LeasePending:
			// A mint that never completed (crash, unknown outcome): the
			// deferred end of its undo.
			revoked++
			m.log.Info("lease: undo of failed mint done by the expiry worker", "lease", o.ID)
		case kinds[i] == resRevoked:
			revoked++
			if debug {
				m.log.Debug("lease expired and revoked", "lease", o.ID)
			}
		case kinds[i] != resFailed:
		case o.State == storage.LeaseIrrevocable:
			m.failures.Add(1)
			m.irrevocable.Add(1)
			m.log.Error("lease irrevocable: giving up", "lease", o.ID, "attempts", o.Attempts, "error", errs[i])
		default:
			m.failures.Add(1)
			m.log.Warn("lease revocation failed, will retry", "lease", o.ID, "attempts", o.Attempts, "next", o.NextAttempt, "error", errs[i])
		}
	}
	if revoked > 0 {
		m.revoked.Add(revoked)
		m.expired.Add(revoked)
		m.log.Info("leases expired and revoked", "leases", revoked)
	}
}

// backoff is BackoffBase·2^(attempts-1), capped at BackoffMax, with up to
// 25% jitter so leases that failed together (one database outage) do not
// retry in lockstep. The jitter needs no unpredictability, hence math/rand.
func (m *Manager) backoff(attempts int) time.Duration {
	d := m.cfg.BackoffBase
	for i := 1; i < attempts && d < m.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, m.cfg.BackoffMax)
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}
