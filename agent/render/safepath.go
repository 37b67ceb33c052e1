package render

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxLinkHops bounds symlink resolution, as the kernel does.
const maxLinkHops = 40

// trusted reports whether a file's owner is root or the agent's user.
func trusted(st *syscall.Stat_t) bool {
	return st.Uid == 0 || int(st.Uid) == os.Geteuid()
}

// safePath walks path from the root, following symlinks, and checks that
// no one but root and the agent's user could have changed what it names:
// every directory on the way is owned by one of them and writable by no
// one else (a sticky directory such as /tmp is allowed, as its other
// users cannot replace entries they do not own), every symlink in a sticky
// directory is owned by one of them, and the final entry is too. It
// returns the resolved path and the final entry's Lstat.
func safePath(path string, wantDir bool) (string, os.FileInfo, *syscall.Stat_t, error) {
	if !filepath.IsAbs(path) {
		return "", nil, nil, fmt.Errorf("%s: not an absolute path", path)
	}
	comps := strings.Split(path, "/")
	cur := "/"
	fi, err := os.Lstat(cur)
	if err != nil {
		return "", nil, nil, err
	}
	st := fi.Sys().(*syscall.Stat_t)
	sticky := false
	hops := 0
	for {
		for len(comps) > 0 && (comps[0] == "" || comps[0] == ".") {
			comps = comps[1:]
		}
		if len(comps) == 0 {
			break
		}
		c := comps[0]
		comps = comps[1:]
		// cur is a checked directory: leave it.
		if err := checkDir(cur, fi, st); err != nil {
			return "", nil, nil, err
		}
		sticky = fi.Mode()&os.ModeSticky != 0
		if c == ".." {
			cur = filepath.Dir(cur)
			if fi, err = os.Lstat(cur); err != nil {
				return "", nil, nil, err
			}
			st = fi.Sys().(*syscall.Stat_t)
			continue
		}
		next := filepath.Join(cur, c)
		nfi, err := os.Lstat(next)
		if err != nil {
			return "", nil, nil, err
		}
		nst := nfi.Sys().(*syscall.Stat_t)
		if nfi.Mode()&os.ModeSymlink != 0 {
			if hops++; hops > maxLinkHops {
				return "", nil, nil, fmt.Errorf("%s: too many symlinks", path)
			}
			if sticky && !trusted(nst) {
				return "", nil, nil, fmt.Errorf("%s: symlink owned by uid %d in the shared directory %s", next, nst.Uid, cur)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", nil, nil, err
			}
			if filepath.IsAbs(target) {
				cur = "/"
				if fi, err = os.Lstat(cur); err != nil {
					return "", nil, nil, err
				}
				st = fi.Sys().(*syscall.Stat_t)
			}
			comps = append(strings.Split(target, "/"), comps...)
			continue
		}
		cur, fi, st = next, nfi, nst
	}
	if !trusted(st) {
		return "", nil, nil, fmt.Errorf("%s is owned by uid %d: it must belong to root or to the agent's user (uid %d)", path, st.Uid, os.Geteuid())
	}
	if wantDir {
		if err := checkDir(cur, fi, st); err != nil {
			return "", nil, nil, err
		}
		return cur, fi, st, nil
	}
	if !fi.Mode().IsRegular() {
		return "", nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return "", nil, nil, fmt.Errorf("%s: mode %04o lets others edit it; remove group and world write (chmod go-w)", path, fi.Mode().Perm())
	}
	if st.Nlink > 1 {
		return "", nil, nil, fmt.Errorf("%s: has %d hard links; a template must be a file of its own", path, st.Nlink)
	}
	return cur, fi, st, nil
}

// checkDir: a directory on a trusted path.
func checkDir(path string, fi os.FileInfo, st *syscall.Stat_t) error {
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", path)
	}
	if !trusted(st) {
		return fmt.Errorf("directory %s is owned by uid %d: it must belong to root or to the agent's user (uid %d)", path, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("directory %s (mode %04o) is writable by others without the sticky bit", path, fi.Mode().Perm())
	}
	return nil
}

// readSource reads a template file named by source. The path must be
// safe (see safePath): whoever can edit a template, or swap it for a link
// to another file, can make the agent render any secret it may fetch, or
// any file it may read, into a file.
func readSource(path string) (string, error) {
	resolved, fi, _, err := safePath(path, false)
	if err != nil {
		return "", fmt.Errorf("source: %w", err)
	}
	f, err := os.OpenFile(resolved, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("source: %w", err)
	}
	defer f.Close()
	ofi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("source: %w", err)
	}
	if !os.SameFile(fi, ofi) {
		return "", fmt.Errorf("source %s: changed while it was checked", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSourceSize+1))
	if err != nil {
		return "", fmt.Errorf("source %s: %w", path, err)
	}
	if len(b) > MaxSourceSize {
		return "", fmt.Errorf("source %s: larger than %d bytes", path, MaxSourceSize)
	}
	return string(b), nil
}
