package sqldb

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// timeCol scans a time stored by either dialect: int64 microseconds since
// the epoch (SQLite), time.Time (PostgreSQL) or NULL (the zero time).
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.t = time.Time{}
	case int64:
		*c.t = time.UnixMicro(v).UTC()
	case time.Time:
		*c.t = v.UTC()
	default:
		return fmt.Errorf("scan time: unsupported type %T", src)
	}
	return nil
}

// jsonCol scans JSON text into v.
type jsonCol struct{ v any }

func (c jsonCol) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case nil:
		return nil
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		return fmt.Errorf("scan json: unsupported type %T", src)
	}
	if err := json.Unmarshal(b, c.v); err != nil {
		return fmt.Errorf("scan json: %w", err)
	}
	return nil
}

// jsonText encodes v as JSON text. A nil slice or map encodes as "null" and
// an empty one as "[]"/"{}", so both round-trip exactly.
func jsonText(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode json: %w", err)
	}
	return string(b), nil
}

// prefixEnd returns the smallest string greater than every string that
// starts with prefix, so that "id >= prefix AND id < end" selects exactly the
// prefix in byte (code point) order, using the primary-key index and needing
// no LIKE escaping. ok is false when no such bound exists (the prefix is all
// U+10FFFF), in which case only the lower bound applies.
func prefixEnd(prefix string) (end string, ok bool) {
	rs := []rune(prefix)
	for i := len(rs) - 1; i >= 0; i-- {
		r := rs[i] + 1
		if r == 0xD800 { // skip surrogates, not valid in UTF-8
			r = 0xE000
		}
		if r <= utf8.MaxRune {
			rs[i] = r
			return string(rs[:i+1]), true
		}
	}
	return "", false
}
