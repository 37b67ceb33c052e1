//go:build !unix

package sqlite

import "context"

// lockFile is a no-op where flock is unavailable: concurrent first Opens of
// one database may then fail, and a retry succeeds.
func lockFile(context.Context, string) (func(), error) { return func() {}, nil }
