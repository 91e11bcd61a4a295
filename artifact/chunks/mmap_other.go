//go:build !linux

package chunks

import "os"

func mapBlock(f *os.File, off int64, n int) ([]byte, bool) { return nil, false }

func unmapBlock(b []byte) {}

func allocBuf(n int) ([]byte, bool) { return make([]byte, n), false }

func freeBuf([]byte) {}

func trimBuf([]byte, int) {}
