// Package pausepoint lets a test hold one call at a chosen point (a
// storage wrapper calls Here between its read and its return) while the
// test interleaves another operation, then let it go on. It is how the
// cache tests put a revocation between a read and the cache fill that
// follows it.
package pausepoint

import "sync/atomic"

// Point holds the first call to Here after Arm. The zero value is ready.
type Point struct {
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

// Arm makes the next call to Here hold until Release.
func (p *Point) Arm() {
	p.reached, p.release = make(chan struct{}), make(chan struct{})
	p.armed.Store(true)
}

// Here holds the first call after Arm; other calls pass.
func (p *Point) Here() {
	if p.armed.CompareAndSwap(true, false) {
		close(p.reached)
		<-p.release
	}
}

// Reached is closed once the held call is at Here.
func (p *Point) Reached() <-chan struct{} { return p.reached }

// Release lets the held call go on.
func (p *Point) Release() { close(p.release) }
