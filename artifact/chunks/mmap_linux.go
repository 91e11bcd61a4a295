package chunks

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapBlock maps n bytes of the chunk file f from off (a multiple of the
// page size), read-only and populated: the stream hashes them and the
// unpacking skips or copies them without a read into a buffer first. A
// chunk file is never truncated while the cache is read (it is renamed
// into place whole, and only removed: a removed file stays mapped), so
// the mapping never outlives its bytes.
func mapBlock(f *os.File, off int64, n int) ([]byte, bool) {
	if n <= 0 || off%int64(os.Getpagesize()) != 0 {
		return nil, false
	}
	b, err := unix.Mmap(int(f.Fd()), off, n, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, false
	}
	return b, true
}

func unmapBlock(b []byte) { unix.Munmap(b) }
