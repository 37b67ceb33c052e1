package bench

import (
	"errors"

	"google.golang.org/grpc"
)

// dialPool dials min(conns, workers) connections, at least one; clients
// share them round robin. On an error the ones dialled are closed.
func dialPool(c SigilConn, workers, conns int) ([]*grpc.ClientConn, error) {
	var pool []*grpc.ClientConn
	for range max(1, min(conns, workers)) {
		cc, err := c.Dial()
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
