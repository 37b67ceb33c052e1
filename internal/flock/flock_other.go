//go:build !unix

package flock

import "os"

func tryLock(*os.File) error { return ErrUnsupported }
