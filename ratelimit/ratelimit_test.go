package ratelimit

import (
	"sync"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(2, 3) // 2/s, burst 3
	l.now = func() time.Time { return now }
	steps := []struct {
		advance time.Duration
		key     string
		want    bool
	}{
		{0, "a", true}, {0, "a", true}, {0, "a", true}, // burst
		{0, "a", false},                     // empty
		{0, "b", true},                      // keys are independent
		{500 * time.Millisecond, "a", true}, // one token back after 0.5 s
		{0, "a", false},
		{10 * time.Second, "a", true}, // refills to the burst, not beyond
		{0, "a", true}, {0, "a", true}, {0, "a", false},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		got, wait := l.Allow(s.key)
		if got != s.want {
			t.Fatalf("step %d (%s): allow = %v, want %v", i, s.key, got, s.want)
		}
		if !got && (wait <= 0 || wait > time.Second) {
			t.Fatalf("step %d: retry after %v", i, wait)
		}
	}
}

func TestDisabledAndConcurrent(t *testing.T) {
	if ok, _ := New(0, 1).Allow("x"); !ok {
		t.Fatal("a zero rate must not limit")
	}
	l := New(1, 100)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				if ok, _ := l.Allow("k"); ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed < 100 || allowed > 102 {
		t.Fatalf("allowed %d of 400 with burst 100", allowed)
	}
}
