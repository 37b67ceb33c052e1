package storage

import (
	"context"
	"errors"
)

// SealedSettings lists barrier-sealed settings for the barrier's rewrap
// registry (it implements barrier.Rewrapper without importing barrier): the
// fixed Keys, then every key under Prefix when Prefix is set. The owner of
// the settings builds one and registers it under the kind it seals with.
type SealedSettings struct {
	Settings Settings
	Keys     []string
	Prefix   string
	// ID maps a setting key to the record id its value is sealed under;
	// nil means the key itself.
	ID func(key string) string
}

// EachSealed visits every listed setting that exists; a key deleted while
// the list is walked is skipped.
func (s SealedSettings) EachSealed(ctx context.Context, visit func(id string, sealed []byte, swap func(ctx context.Context, old, new []byte) error) error) error {
	keys := s.Keys
	if s.Prefix != "" {
		more, err := s.Settings.List(ctx, s.Prefix)
		if err != nil {
			return err
		}
		keys = append(keys[:len(keys):len(keys)], more...)
	}
	for _, key := range keys {
		v, err := s.Settings.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		id := key
		if s.ID != nil {
			id = s.ID(key)
		}
		if err := visit(id, v, func(ctx context.Context, old, new []byte) error {
			return Superseded(s.Settings.Replace(ctx, key, old, new))
		}); err != nil {
			return err
		}
	}
	return nil
}

// Superseded maps the errors of a compare-and-swap that lost to a
// concurrent writer (ErrConflict) or deleter (ErrNotFound) to nil, as a
// rewrap's swap reports them: the value was replaced or is gone, and either
// way needs no rewrap.
func Superseded(err error) error {
	if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
