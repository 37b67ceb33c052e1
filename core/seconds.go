package core

import (
	"fmt"
	"math"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
)

// Seconds converts a seconds count from the wire to a duration. It
// refuses negative counts and counts above limit (named by limitName; a zero
// limit means only what a time.Duration can hold), so the conversion can
// never overflow into a negative or tiny duration.
func Seconds(name string, secs int64, limit time.Duration, limitName string) (time.Duration, error) {
	if secs < 0 {
		return 0, errs.Errorf(errs.InvalidArgument, "%s must not be negative (got %d)", name, secs)
	}
	if limit > 0 && secs > int64(limit/time.Second) {
		return 0, errs.Errorf(errs.InvalidArgument, "%s %d (%s) exceeds %s %s", name, secs, humanSeconds(secs), limitName, limit)
	}
	if secs > int64(math.MaxInt64/time.Second) {
		return 0, errs.Errorf(errs.InvalidArgument, "%s %d is out of range: at most %d seconds (about 292 years)", name, secs, int64(math.MaxInt64/time.Second))
	}
	return time.Duration(secs) * time.Second, nil
}

// humanSeconds renders a seconds count as hours or years without
// overflowing a time.Duration.
func humanSeconds(secs int64) string {
	const year = 365 * 24 * 3600
	if secs >= year {
		return fmt.Sprintf("about %d years", secs/year)
	}
	return (time.Duration(secs) * time.Second).String()
}
