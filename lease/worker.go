package lease

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

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

// Stop stops the worker and waits for in-flight revocations to end.
// Claims it held lapse after ClaimTimeout and are taken up again later.
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := m.sweep(ctx)
		// A full batch means more are due: go again at once.
		if n < m.cfg.BatchSize {
			t.Reset(m.cfg.PollInterval)
		} else {
			t.Reset(0)
		}
	}
}

// sweep claims one batch of due leases and revokes them, returning how many
// it claimed.
func (m *Manager) sweep(ctx context.Context) int {
	t := now()
	batch, err := m.cfg.Store.Leases().ClaimDue(ctx, t, t.Add(m.cfg.ClaimTimeout), m.cfg.BatchSize)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("lease: claim due leases", "error", err)
		}
		return 0
	}
	sem := make(chan struct{}, m.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, l := range batch {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			m.expire(ctx, l)
		}()
	}
	wg.Wait()
	return len(batch)
}

// expire revokes one claimed lease and records the outcome: revoked, or a
// retry after exponential backoff, or irrevocable after MaxAttempts.
func (m *Manager) expire(ctx context.Context, l *storage.Lease) {
	rctx, cancel := context.WithTimeout(ctx, m.cfg.RevokeTimeout)
	err := m.revokeOne(rctx, l)
	cancel()
	if ctx.Err() != nil {
		// Shutting down: record nothing; the claim lapses and another
		// attempt follows, which revocation's idempotence makes safe.
		return
	}
	// Recording uses its own context so a slow revocation near the claim
	// deadline still gets its outcome written.
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer wcancel()
	attempts := l.Attempts + 1
	if err == nil {
		if serr := m.cfg.Store.Leases().SetState(wctx, l.ID, storage.LeaseRevoked, attempts, time.Time{}, ""); serr != nil {
			m.log.Error("lease: record expiry", "lease", l.ID, "error", serr)
			return
		}
		m.revoked.Add(1)
		m.expired.Add(1)
		m.log.Info("lease expired and revoked", "lease", l.ID)
		return
	}
	m.failures.Add(1)
	msg := truncate(err.Error(), 1000)
	if attempts >= m.cfg.MaxAttempts {
		if serr := m.cfg.Store.Leases().SetState(wctx, l.ID, storage.LeaseIrrevocable, attempts, time.Time{}, msg); serr != nil {
			m.log.Error("lease: record irrevocable", "lease", l.ID, "error", serr)
			return
		}
		m.irrevocable.Add(1)
		m.log.Error("lease irrevocable: giving up", "lease", l.ID, "attempts", attempts, "error", err)
		return
	}
	next := now().Add(m.backoff(attempts))
	if serr := m.cfg.Store.Leases().SetState(wctx, l.ID, storage.LeaseActive, attempts, next, msg); serr != nil {
		m.log.Error("lease: record failed revocation", "lease", l.ID, "error", serr)
		return
	}
	m.log.Warn("lease revocation failed, will retry", "lease", l.ID, "attempts", attempts, "next", next, "error", err)
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
