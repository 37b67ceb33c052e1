package sqlite

import (
	"context"
	"errors"

	"github.com/sigil-ca/sigil/internal/flock"
)

// lockFile takes an exclusive flock on path (created 0600 if absent) and
// returns its release. It serialises migrations between Opens of one
// database, in this process or others: goose reads the schema version
// outside the migration's transaction, so two first Opens would both try
// to create the schema. The kernel drops the lock if the process dies.
//
// A separate file, because closing any descriptor of the database file
// itself would drop the POSIX locks SQLite holds on it in this process.
//
// Where flock does not exist it is a no-op: concurrent first Opens of one
// database may then fail, and a retry succeeds.
func lockFile(ctx context.Context, path string) (func(), error) {
	l, err := flock.Acquire(ctx, path)
	if errors.Is(err, flock.ErrUnsupported) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	return l.Release, nil
}
