package bench

import (
	"errors"
	"strings"

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
