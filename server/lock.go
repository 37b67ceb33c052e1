package server

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/sigil-ca/sigil/internal/flock"
)

// lockDir takes an exclusive advisory lock on a data directory, so two
// servers never share one embedded database and keystore, or fails naming
// the holder.
func lockDir(dir string) (*flock.Lock, error) {
	l, holder, err := flock.TryAcquirePID(filepath.Join(dir, "sigil.lock"))
	if errors.Is(err, flock.ErrLocked) {
		return nil, fmt.Errorf("data directory %s is in use by another sigil server (pid %s); stop it or use another --data", dir, holder)
	}
	return l, err
}
