package auth

import "time"

// SetClock replaces the token service's clock (tests only).
func SetClock(t *Tokens, now func() time.Time) { t.now = now }

// TokenCacheTTL exposes the cache lifetime to tests.
const TokenCacheTTL = tokenCacheTTL

// SetSVIDClock replaces the SVID verifier's clock (tests only).
func SetSVIDClock(v *SVIDVerifier, now func() time.Time) { v.now = now }
