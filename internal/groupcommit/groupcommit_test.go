package groupcommit

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var errBad = errors.New("bad item")

// store is an in-memory "database": a batch commits all its items or none.
type store struct {
	mu        sync.Mutex
	committed []int
	batches   atomic.Int64
	block     chan struct{} // if set, the first batch waits on it
}

func (s *store) batch(_ context.Context, items []int) error {
	if n := s.batches.Add(1); n == 1 && s.block != nil {
		<-s.block
	}
	for _, it := range items {
		if it < 0 {
			return errBad
		}
		if it == 666 {
			panic("power cut")
		}
	}
	s.mu.Lock()
	s.committed = append(s.committed, items...)
	s.mu.Unlock()
	return nil
}

func TestCommitter(t *testing.T) {
	tests := []struct {
		name      string
		items     []int
		wantErr   map[int]bool // items whose Do fails
		maxBatch  int
		blockHead bool
	}{
		{name: "one", items: []int{1}, maxBatch: 8},
		{name: "many batched", items: []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, maxBatch: 4, blockHead: true},
		{name: "bad item fails alone", items: []int{1, 2, -3, 4, 5}, wantErr: map[int]bool{-3: true}, maxBatch: 8, blockHead: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &store{}
			if tt.blockHead {
				s.block = make(chan struct{})
			}
			c := New(tt.maxBatch, s.batch, nil, nil)
			var wg sync.WaitGroup
			errs := make([]error, len(tt.items))
			// The first caller leads and blocks inside its batch, so the
			// others queue up behind it and are written together.
			wg.Go(func() { errs[0] = c.Do(context.Background(), tt.items[0]) })
			for s.batches.Load() == 0 {
				time.Sleep(time.Millisecond)
			}
			for i := 1; i < len(tt.items); i++ {
				wg.Go(func() { errs[i] = c.Do(context.Background(), tt.items[i]) })
			}
			if s.block != nil {
				time.Sleep(50 * time.Millisecond)
				close(s.block)
			}
			wg.Wait()
			var want []int
			for i, it := range tt.items {
				if tt.wantErr[it] != (errs[i] != nil) {
					t.Errorf("item %d: err %v", it, errs[i])
				}
				if !tt.wantErr[it] {
					want = append(want, it)
				}
			}
			got := slices.Clone(s.committed)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("committed %v, want %v", got, want)
			}
			if tt.blockHead && len(tt.wantErr) == 0 && s.batches.Load() >= int64(len(tt.items)) {
				t.Fatalf("%d batches for %d items: nothing was grouped", s.batches.Load(), len(tt.items))
			}
		})
	}
}

func TestCommitterPanic(t *testing.T) {
	s := &store{}
	var reported atomic.Int64
	c := New(8, s.batch, nil, func(any) { reported.Add(1) })
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("a panic in the leader's own batch was swallowed")
			}
		}()
		_ = c.Do(context.Background(), 666)
	}()
	// The leadership was given up: the next caller is served.
	if err := c.Do(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.committed, []int{1}) {
		t.Fatalf("committed %v", s.committed)
	}
}

func TestCommitterContext(t *testing.T) {
	s := &store{block: make(chan struct{})}
	c := New(8, s.batch, nil, nil)
	go func() { _ = c.Do(context.Background(), 1) }()
	for s.batches.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Do(ctx, 2) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Do after cancel: %v", err)
	}
	close(s.block)
}
