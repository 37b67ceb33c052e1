package ratelimit

import (
	"sync/atomic"

	"github.com/sigil-ca/sigil/internal/errs"
)

// Slots bounds calls in flight by count rather than rate: at most perConn
// on one connection and total on the whole server at once. A call over
// either count is refused at once (ResourceExhausted); a refused caller
// retries.
type Slots struct {
	server  chan struct{}
	perConn int32
	// errConn and errServer name what is counted and the bound.
	errConn, errServer error
}

// NewSlots returns the bounds; what names the calls counted in refusals
// ("unauthenticated calls").
func NewSlots(total, perConn int, what string) *Slots {
	return &Slots{server: make(chan struct{}, total), perConn: int32(perConn),
		errConn:   errs.Errorf(errs.ResourceExhausted, "too many %s in flight on this connection (at most %d)", what, perConn),
		errServer: errs.Errorf(errs.ResourceExhausted, "too many %s in flight on this server (at most %d): retry shortly", what, total)}
}

// Conn counts one connection's calls in flight. The zero value is ready.
type Conn struct{ n atomic.Int32 }

// Slot is one admitted call's hold on its connection's and the server's
// counts.
type Slot struct {
	conn     *Conn
	server   chan struct{}
	released atomic.Bool
}

// Take admits a call on conn (nil when the connection is unknown: only the
// server-wide count applies) if both counts have room.
func (s *Slots) Take(conn *Conn) (*Slot, error) {
	if conn != nil && conn.n.Add(1) > s.perConn {
		conn.n.Add(-1)
		return nil, s.errConn
	}
	select {
	case s.server <- struct{}{}:
	default:
		if conn != nil {
			conn.n.Add(-1)
		}
		return nil, s.errServer
	}
	return &Slot{conn: conn, server: s.server}, nil
}

// Release gives the slot back; calling it again does nothing.
func (p *Slot) Release() {
	if p.released.CompareAndSwap(false, true) {
		<-p.server
		if p.conn != nil {
			p.conn.n.Add(-1)
		}
	}
}
