package flock

import (
	"errors"
	"os"
	"strconv"
	"strings"
)

// TryAcquirePID is TryAcquire that records this process's pid in the
// locked file, so that a refused caller can name the holder: with an error
// wrapping ErrLocked, holder is the pid the holder recorded ("unknown" if
// it recorded none).
func TryAcquirePID(path string) (l *Lock, holder string, err error) {
	l, err = TryAcquire(path)
	if errors.Is(err, ErrLocked) {
		b, _ := os.ReadFile(path)
		if holder = strings.TrimSpace(string(b)); holder == "" {
			holder = "unknown"
		}
		return nil, holder, err
	}
	if err != nil {
		return nil, "", err
	}
	if f := l.File(); f.Truncate(0) == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return l, "", nil
}
