package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
)

// TestSlots: a connection holds at most perConn, the server at most total,
// a refusal is ResourceExhausted and takes nothing, and a release (twice
// over) frees exactly one slot.
func TestSlots(t *testing.T) {
	s := NewSlots(3, 2, "test calls")
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
		slot, err := s.Take(st.conn)
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
	if _, err := s.Take(nil); err != nil {
		t.Fatalf("a released slot is free again: %v", err)
	}
	if _, err := s.Take(b); err == nil {
		t.Fatal("server full again, yet a call was admitted")
	}
}

// TestSlotsHold: a held slot ends its context after the timeout and is
// given back by ReleaseHeld (which also ends the context); ReleaseHeld on a
// context without one does nothing.
func TestSlotsHold(t *testing.T) {
	s := NewSlots(1, 1, "test calls")
	ReleaseHeld(context.Background())
	ctx, err := s.Hold(context.Background(), nil, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(context.Background(), nil, time.Minute); err == nil {
		t.Fatal("a second call got the only slot")
	}
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("held context ended with %v, want its deadline", ctx.Err())
	}
	ReleaseHeld(ctx)
	ctx2, err := s.Hold(context.Background(), nil, time.Minute)
	if err != nil {
		t.Fatalf("slot not given back: %v", err)
	}
	ReleaseHeld(ctx2)
	if ctx2.Err() == nil {
		t.Fatal("releasing did not end the held context")
	}
	ReleaseHeld(ctx2) // twice: nothing more is given back
	if _, err := s.Hold(context.Background(), nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hold(context.Background(), nil, time.Minute); err == nil {
		t.Fatal("a double release gave back two slots")
	}
}
