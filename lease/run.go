package lease

import "context"

// Run runs the expiry worker in the calling goroutine until ctx ends, then
// returns ctx's error once in-flight revocations have ended: Start and Stop
// in the func(ctx) error form background tasks are joined in. It does not
// share state with Start and Stop.
func (m *Manager) Run(ctx context.Context) error {
	done := make(chan struct{})
	m.run(ctx, done)
	return ctx.Err()
}
