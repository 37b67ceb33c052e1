package main

import (
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Bounds the CLI puts on durations before sending them. The server caps
// TTLs further (a profile's or role's maximum); these catch typos and
// values that cannot mean what was intended.
const (
	year = 365 * 24 * time.Hour
	// maxCertTTL bounds a leaf certificate, a lease or an API token.
	maxCertTTL = 10 * year
	// maxCATTL bounds a root or intermediate CA.
	maxCATTL = 30 * year
	// maxBootstrapTTL bounds single-use secrets that bootstrap others: join
	// tokens and wrapping tokens.
	maxBootstrapTTL = 31 * 24 * time.Hour
	// minTTL: below a second a TTL would be truncated to 0, which means
	// "the default" on the wire.
	minTTL = time.Second
)

// durationSyntax matches what time.ParseDuration accepts, so a value it
// matches but does not parse is out of range rather than malformed.
var durationSyntax = regexp.MustCompile(`^[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+$`)

// ttlValue is a duration flag with a minimum, a maximum and errors that say
// which bound was crossed. 0 means "not given" (the server's default).
type ttlValue struct {
	d        *time.Duration
	min, max time.Duration
}

func (v *ttlValue) String() string {
	if v == nil || v.d == nil {
		return "0s"
	}
	return v.d.String()
}

func (v *ttlValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		switch {
		case durationSyntax.MatchString(s):
			return fmt.Errorf("too long: the maximum is %s", fmtDuration(v.max))
		case strings.Contains(err.Error(), "missing unit"):
			return fmt.Errorf("needs a unit, e.g. 30s, 10m or 24h")
		}
		return fmt.Errorf("not a duration; use e.g. 30s, 10m or 24h")
	}
	switch {
	case d < 0:
		return fmt.Errorf("must not be negative")
	case d > 0 && d < v.min:
		return fmt.Errorf("shorter than the minimum, %s (0 means the default)", fmtDuration(v.min))
	case d > v.max:
		return fmt.Errorf("longer than the maximum, %s", fmtDuration(v.max))
	}
	*v.d = d
	return nil
}

// ttlFlag defines a bounded duration flag.
func ttlFlag(fs *flag.FlagSet, name string, def, minD, maxD time.Duration, usage string) *time.Duration {
	d := def
	fs.Var(&ttlValue{d: &d, min: minD, max: maxD}, name, usage)
	return &d
}

// fmtDuration prints whole hours as "87600h" and days beside them.
func fmtDuration(d time.Duration) string {
	if d >= 48*time.Hour && d%time.Hour == 0 {
		return fmt.Sprintf("%dh (%d days)", d/time.Hour, d/(24*time.Hour))
	}
	return d.String()
}

// cappedTTL compares a requested TTL with what the server granted (an
// expiry, seen from when the request was sent). It reports the granted TTL
// and whether the server shortened the request: a little slack absorbs the
// call's own duration and whole-second rounding.
func cappedTTL(requested time.Duration, sent time.Time, expires int64) (granted time.Duration, capped bool) {
	if expires == 0 {
		return 0, false
	}
	// Expiries are whole seconds, truncated from the server's clock.
	granted = time.Unix(expires, 0).Sub(sent.Truncate(time.Second))
	return granted, requested > 0 && granted < requested-5*time.Second
}

// warnCapped prints the warning for a TTL the server shortened.
func warnCapped(w io.Writer, flagName string, requested, granted time.Duration) {
	fmt.Fprintf(w, "warning: %s %s was capped by the server to %s\n", flagName, shortDuration(requested), shortDuration(granted))
}

// shortDuration prints 24h rather than 24h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ttlReport adds the requested and granted TTL to a JSON view, with
// ttl_capped when the server shortened it, and warns on w.
func ttlReport(w io.Writer, view map[string]any, flagName string, requested time.Duration, sent time.Time, expires int64) {
	granted, capped := cappedTTL(requested, sent, expires)
	if expires != 0 {
		view["ttl_seconds"] = int64(granted / time.Second)
	}
	if requested > 0 {
		view["requested_ttl_seconds"] = int64(requested / time.Second)
		view["ttl_capped"] = capped
	}
	if capped {
		warnCapped(w, flagName, requested, granted)
	}
}
