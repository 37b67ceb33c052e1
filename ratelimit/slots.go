package ratelimit

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
)

// Slots bounds calls in flight by count rather than rate: at most perConn
// on one connection, perSource from one source (a client address) over
// all its connections, and total on the whole server at once. A call over
// any count is refused at once (ResourceExhausted); a refused caller
// retries. The source bound keeps one client, however many connections it
// opens, from taking every slot.
type Slots struct {
	server    chan struct{}
	perConn   int32
	perSource int32
	mu        sync.Mutex
	sources   map[string]int32 // calls in flight per source
	// errConn, errSource and errServer name what is counted and the bound.
	errConn, errSource, errServer error
}

// NewSlots returns the bounds (perSource 0: none); what names the calls
// counted in refusals ("unauthenticated calls").
func NewSlots(total, perConn, perSource int, what string) *Slots {
	return &Slots{server: make(chan struct{}, total), perConn: int32(perConn), perSource: int32(perSource),
		sources:   map[string]int32{},
		errConn:   errs.Errorf(errs.ResourceExhausted, "too many %s in flight on this connection (at most %d)", what, perConn),
		errSource: errs.Errorf(errs.ResourceExhausted, "too many %s in flight from this address (at most %d)", what, perSource),
		errServer: errs.Errorf(errs.ResourceExhausted, "too many %s in flight on this server (at most %d): retry shortly", what, total)}
}

// Conn counts one connection's calls in flight. The zero value is ready.
type Conn struct{ n atomic.Int32 }

// Slot is one admitted call's hold on its connection's, its source's and the server's
// counts.
type Slot struct {
	slots    *Slots
	conn     *Conn
	source   string
	released atomic.Bool
	cancel   context.CancelFunc // Hold's deadline, ended on release
}

// Take admits a call on conn (nil when the connection is unknown) from
// source ("" when unknown) if every count that applies has room.
func (s *Slots) Take(conn *Conn, source string) (*Slot, error) {
	if conn != nil && conn.n.Add(1) > s.perConn {
		conn.n.Add(-1)
		return nil, s.errConn
	}
	if !s.takeSource(source) {
		if conn != nil {
			conn.n.Add(-1)
		}
		return nil, s.errSource
	}
	select {
	case s.server <- struct{}{}:
	default:
		s.releaseSource(source)
		if conn != nil {
			conn.n.Add(-1)
		}
		return nil, s.errServer
	}
	return &Slot{slots: s, conn: conn, source: source}, nil
}

func (s *Slots) takeSource(source string) bool {
	if s.perSource <= 0 || source == "" {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sources[source] >= s.perSource {
		return false
	}
	s.sources[source]++
	return true
}

func (s *Slots) releaseSource(source string) {
	if s.perSource <= 0 || source == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sources[source]--; s.sources[source] <= 0 {
		delete(s.sources, source) // the map holds only sources in flight
	}
}

// Release gives the slot back; calling it again does nothing.
func (p *Slot) Release() {
	if p.released.CompareAndSwap(false, true) {
		if p.cancel != nil {
			p.cancel()
		}
		<-p.slots.server
		p.slots.releaseSource(p.source)
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
func (s *Slots) Hold(ctx context.Context, conn *Conn, source string, timeout time.Duration) (context.Context, error) {
	slot, err := s.Take(conn, source)
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
