// Package ratelimit is a keyed token-bucket limiter: one bucket per key
// (for Sigil, an identity and the path it mints or issues on), refilled at
// a steady rate up to a burst, so one caller cannot exhaust the authority
// for everyone else.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// maxKeys bounds the buckets kept; when full, buckets idle long enough to
// be full again are dropped (they would allow the same as a new one).
const maxKeys = 100_000

// Limiter limits events per key. The zero value is not usable; use New.
type Limiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter allowing rate events per second per key with bursts
// of burst. A rate <= 0 disables limiting.
func New(rate float64, burst int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	return &Limiter{rate: rate, burst: float64(burst), now: time.Now, buckets: map[string]*bucket{}}
}

// Allow takes one token from key's bucket. When none is left it reports
// false and how long until one is.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxKeys {
			l.evictLocked(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, wait
}

// evictLocked drops buckets that have refilled completely.
func (l *Limiter) evictLocked(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}
