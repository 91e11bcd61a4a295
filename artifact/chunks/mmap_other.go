//go:build !linux

package chunks

import "os"

func mapBlock(f *os.File, off int64, n int) ([]byte, bool) { return nil, false }

func unmapBlock(b []byte) {}
