package authmethod

import (
	"sync"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/ratelimit"
)

// FailureLimiter refuses a source's login attempts for a while once it has
// failed too often: each failure takes a token from the source's bucket,
// and a failure that finds the bucket empty blocks the source until a
// token is back. Successful logins cost nothing, so a busy legitimate
// client is never slowed.
type FailureLimiter struct {
	l   *ratelimit.Limiter
	now func() time.Time

	mu      sync.Mutex
	blocked map[string]time.Time
}

// maxBlocked bounds the blocked-source map; when full, expired entries are
// dropped, and if none are, a new block is not recorded (the failure
// bucket still refills slowly, so the source stays limited).
const maxBlocked = 100_000

// NewFailureLimiter allows burst failures per source, refilled at rate
// per second.
func NewFailureLimiter(rate float64, burst int) *FailureLimiter {
	return &FailureLimiter{l: ratelimit.New(rate, burst), now: time.Now, blocked: map[string]time.Time{}}
}

// DefaultFailureLimiter allows 10 failures per source, then one every 6
// seconds.
func DefaultFailureLimiter() *FailureLimiter {
	return NewFailureLimiter(DefaultFailureRate, DefaultFailureBurst)
}

// The defaults of DefaultFailureLimiter.
const (
	DefaultFailureRate  = 1.0 / 6
	DefaultFailureBurst = 10
)

// Check refuses a blocked source with ResourceExhausted saying how long to
// wait.
func (f *FailureLimiter) Check(source string) error {
	f.mu.Lock()
	until, ok := f.blocked[source]
	now := f.now()
	if ok && !now.Before(until) {
		delete(f.blocked, source)
		ok = false
	}
	f.mu.Unlock()
	if ok {
		return errs.Errorf(errs.ResourceExhausted, "too many failed logins from this address: retry in %s", until.Sub(now).Round(time.Second)+time.Second)
	}
	return nil
}

// Fail records a failed attempt from source.
func (f *FailureLimiter) Fail(source string) {
	ok, wait := f.l.Allow(source)
	if ok {
		return
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.blocked) >= maxBlocked {
		for k, t := range f.blocked {
			if !now.Before(t) {
				delete(f.blocked, k)
			}
		}
		if len(f.blocked) >= maxBlocked {
			return
		}
	}
	f.blocked[source] = now.Add(wait)
}
