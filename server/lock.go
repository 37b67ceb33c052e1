package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sigil-ca/sigil/internal/flock"
)

// dirLock is an exclusive advisory lock on a data directory, so two servers
// never share one embedded database and keystore.
type dirLock struct{ l *flock.Lock }

// lockDir takes the lock or fails naming the holder.
func lockDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, "sigil.lock")
	l, err := flock.TryAcquire(path)
	if errors.Is(err, flock.ErrLocked) {
		b, _ := os.ReadFile(path)
		holder := strings.TrimSpace(string(b))
		if holder == "" {
			holder = "unknown"
		}
		return nil, fmt.Errorf("data directory %s is in use by another sigil server (pid %s); stop it or use another --data", dir, holder)
	}
	if err != nil {
		return nil, err
	}
	if f := l.File(); f.Truncate(0) == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{l: l}, nil
}

func (l *dirLock) release() {
	if l != nil {
		l.l.Release()
	}
}
