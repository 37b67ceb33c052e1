package ratelimit

import (
	"context"
	"sync/atomic"
	"time"

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
	cancel   context.CancelFunc // Hold's deadline, ended on release
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
		if p.cancel != nil {
			p.cancel()
		}
		<-p.server
		if p.conn != nil {
			p.conn.n.Add(-1)
		}
	}
}

type heldKey struct{}

// Hold admits a call as Take does and bounds how long it may keep its slot
// (a body trickled in, or never sent, cannot hold one forever): the
// returned context ends after timeout, and carries the slot for
// ReleaseHeld, which the call's end runs.
func (s *Slots) Hold(ctx context.Context, conn *Conn, timeout time.Duration) (context.Context, error) {
	slot, err := s.Take(conn)
	if err != nil {
		return nil, err
	}
	ctx, slot.cancel = context.WithTimeout(ctx, timeout)
	return context.WithValue(ctx, heldKey{}, slot), nil
}

// ReleaseHeld releases the slot Hold put in ctx (and ends its deadline);
// without one it does nothing.
func ReleaseHeld(ctx context.Context) {
	if p, ok := ctx.Value(heldKey{}).(*Slot); ok {
		p.Release()
	}
}
