package bench

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
)

// dialPool dials min(conns, workers) connections, at least one; clients
// share them round robin. When c.Addr lists several addresses
// (comma-separated, as SIGIL_ADDR does for a cluster), connection i goes to
// address i mod len(addresses), so worker w talks to node NodeOf(w, …).
// On an error the ones dialled are closed.
func dialPool(c SigilConn, workers, conns int) ([]*grpc.ClientConn, error) {
	var pool []*grpc.ClientConn
	addrs := strings.Split(c.Addr, ",")
	for i := range max(1, min(conns, workers)) {
		one := c
		one.Addr = strings.TrimSpace(addrs[i%len(addrs)])
		cc, err := one.Dial()
		if err != nil {
			_ = closeAll(pool)
			return nil, err
		}
		pool = append(pool, cc)
	}
	return pool, nil
}

// closeAll closes every connection of a pool.
func closeAll(pool []*grpc.ClientConn) error {
	var errs []error
	for _, c := range pool {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// NodeOf is the index of the address worker talks to, for a pool dialled
// by dialPool with min(conns, workers) connections over nodes addresses.
func NodeOf(worker, workers, conns, nodes int) int {
	return worker % max(1, min(conns, workers)) % max(nodes, 1)
}

// PerWorker wraps a scenario and counts each worker's successful
// operations, so a multi-node run can attribute them to the node each
// worker talks to (NodeOf) and divide that node's CPU by them.
type PerWorker struct {
	Scenario
	ok []atomic.Int64
}

// CountPerWorker wraps sc for workers workers.
func CountPerWorker(sc Scenario, workers int) *PerWorker {
	return &PerWorker{Scenario: sc, ok: make([]atomic.Int64, workers)}
}

// Do runs one operation and counts it when it succeeded.
func (p *PerWorker) Do(ctx context.Context, worker int) error {
	err := p.Scenario.Do(ctx, worker)
	if err == nil {
		p.ok[worker].Add(1)
	}
	return err
}

// OK is how many operations worker completed.
func (p *PerWorker) OK(worker int) int64 { return p.ok[worker].Load() }

// Reset zeroes the counts (after a warm-up).
func (p *PerWorker) Reset() {
	for i := range p.ok {
		p.ok[i].Store(0)
	}
}
