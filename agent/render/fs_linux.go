//go:build linux

package render

import (
	"fmt"
	"syscall"
)

// Filesystem magic numbers from linux/magic.h.
const (
	tmpfsMagic = 0x01021994
	ramfsMagic = 0x858458f6
)

// memoryBacked reports whether dir lives on tmpfs or ramfs, and the
// filesystem type it found.
func memoryBacked(dir string) (bool, string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return false, "", fmt.Errorf("statfs %s: %w", dir, err)
	}
	switch uint32(st.Type) {
	case tmpfsMagic:
		return true, "tmpfs", nil
	case ramfsMagic:
		return true, "ramfs", nil
	}
	return false, fmt.Sprintf("filesystem type 0x%x", uint32(st.Type)), nil
}
