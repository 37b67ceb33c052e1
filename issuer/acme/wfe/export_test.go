package wfe

import "context"

// Test access to the nonce life cycle from package wfe_test, which can
// import internal/testharness (that imports this package) for PostgreSQL.

// MakeNonce mints a nonce.
func MakeNonce(ctx context.Context, f *WFE) (string, error) { return f.makeNonce(ctx) }

// UseNonce checks and records a nonce.
func UseNonce(ctx context.Context, f *WFE, nonce string) error { return f.useNonce(ctx, nonce) }

// ErrBadNonce is the error of a nonce refused.
var ErrBadNonce = errBadNonce

// UsedNonces is how many used nonces local nonces remember (-1 for stored
// nonces).
func UsedNonces(f *WFE) int {
	l, ok := f.nonces.(*localNonces)
	if !ok {
		return -1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.used)
}
