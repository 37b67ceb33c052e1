// Package pausepoint lets a test hold one call at a chosen point (a
// storage wrapper calls Here between its read and its return) while the
// test runs another operation, then let it go on. It is how the cache
// tests put a revocation between a read and the cache fill that follows.
package pausepoint

import "sync/atomic"

// Point holds, during Interleave, the first call to Here. The zero value
// is ready.
type Point struct {
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

// Here holds the first call after Interleave armed p until Interleave lets
// it go on; other calls pass.
func (p *Point) Here() {
	if p.armed.CompareAndSwap(true, false) {
		close(p.reached)
		<-p.release
	}
}

// Interleave runs held on another goroutine until it reaches Here, runs
// between, then lets held go on. It returns held's error and between's.
// held must reach Here.
func (p *Point) Interleave(held, between func() error) (heldErr, betweenErr error) {
	p.reached, p.release = make(chan struct{}), make(chan struct{})
	p.armed.Store(true)
	done := make(chan error, 1)
	go func() { done <- held() }()
	<-p.reached
	betweenErr = between()
	close(p.release)
	return <-done, betweenErr
}
