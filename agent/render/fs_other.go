//go:build !linux

package render

// memoryBacked cannot tell a memory filesystem here, so every destination
// needs allow_disk.
func memoryBacked(dir string) (bool, string, error) {
	return false, "a filesystem this platform cannot identify", nil
}
