package ratelimit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
)

// TestSlots: a connection holds at most perConn, the server at most total,
// a refusal is ResourceExhausted and takes nothing, and a release (twice
// over) frees exactly one slot.
func TestSlots(t *testing.T) {
	s := NewSlots(3, 2, 0, "test calls")
	a, b := &Conn{}, &Conn{}
	steps := []struct {
		name string
		conn *Conn
		ok   bool
	}{
		{"first on a", a, true},
		{"second on a", a, true},
		{"third on a is over perConn", a, false},
		{"first on b", b, true},
		{"second on b is over total", b, false},
		{"unknown connection is over total", nil, false},
	}
	var held []*Slot
	for _, st := range steps {
		slot, err := s.Take(st.conn, "")
		if st.ok != (err == nil) {
			t.Fatalf("%s: err = %v, want ok=%v", st.name, err, st.ok)
		}
		if err != nil {
			if errs.KindOf(err) != errs.ResourceExhausted {
				t.Fatalf("%s: kind %v, want ResourceExhausted", st.name, errs.KindOf(err))
			}
			continue
		}
		held = append(held, slot)
	}
	if got := a.n.Load(); got != 2 {
		t.Fatalf("conn a holds %d, want 2 (a refusal must take nothing)", got)
	}
	held[0].Release()
	held[0].Release()
	if got := a.n.Load(); got != 1 {
		t.Fatalf("after a double release conn a holds %d, want 1", got)
	}
	if _, err := s.Take(nil, ""); err != nil {
		t.Fatalf("a released slot is free again: %v", err)
	}
	if _, err := s.Take(b, ""); err == nil {
		t.Fatal("server full again, yet a call was admitted")
	}
}

// TestSlotsHold: a held slot ends its context after the timeout and is
// given back by ReleaseHeld (which also ends the context); ReleaseHeld on a
// context without one does nothing.
func TestSlotsHold(t *testing.T) {
	s := NewSlots(1, 1, 0, "test calls")
	ReleaseHeld(context.Background())
	ctx, err := s.Hold(context.Background(), nil, "", 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(context.Background(), nil, "", time.Minute); err == nil {
		t.Fatal("a second call got the only slot")
	}
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("held context ended with %v, want its deadline", ctx.Err())
	}
	ReleaseHeld(ctx)
	ctx2, err := s.Hold(context.Background(), nil, "", time.Minute)
	if err != nil {
		t.Fatalf("slot not given back: %v", err)
	}
	ReleaseHeld(ctx2)
	if ctx2.Err() == nil {
		t.Fatal("releasing did not end the held context")
	}
	ReleaseHeld(ctx2) // twice: nothing more is given back
	if _, err := s.Hold(context.Background(), nil, "", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(context.Background(), nil, "", time.Minute); err == nil {
		t.Fatal("a double release gave back two slots")
	}
}

// TestSlotsPerSource: one source holds at most perSource over all its
// connections, another source still gets in, a refusal takes nothing, and
// a release frees the source's count.
func TestSlotsPerSource(t *testing.T) {
	s := NewSlots(8, 4, 2, "test calls")
	c1, c2, c3 := &Conn{}, &Conn{}, &Conn{}
	steps := []struct {
		name, source string
		conn         *Conn
		ok           bool
	}{
		{"first from a", "a", c1, true},
		{"second from a, another connection", "a", c2, true},
		{"third from a is over perSource", "a", c1, false},
		{"first from b", "b", c3, true},
		{"unknown source is not counted per source", "", c3, true},
	}
	var held []*Slot
	for _, st := range steps {
		slot, err := s.Take(st.conn, st.source)
		if st.ok != (err == nil) {
			t.Fatalf("%s: err = %v, want ok=%v", st.name, err, st.ok)
		}
		if err != nil {
			if errs.KindOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "from this address") {
				t.Fatalf("%s: %v, want ResourceExhausted naming the address bound", st.name, err)
			}
			continue
		}
		held = append(held, slot)
	}
	if got := c1.n.Load(); got != 1 {
		t.Fatalf("conn c1 holds %d, want 1 (a refusal must take nothing)", got)
	}
	if got := len(s.server); got != 4 {
		t.Fatalf("server holds %d, want 4", got)
	}
	held[0].Release()
	if _, err := s.Take(c1, "a"); err != nil {
		t.Fatalf("a released slot is free again for its source: %v", err)
	}
	for _, h := range held {
		h.Release()
	}
}
