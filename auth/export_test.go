package auth

import "time"

// SetClock replaces the token service's clock (tests only).
func SetClock(t *Tokens, now func() time.Time) { t.now = now }

// TokenCacheTTL exposes the cache lifetime to tests.
const TokenCacheTTL = tokenCacheTTL
