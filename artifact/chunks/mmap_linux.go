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

// allocBuf makes a buffer of n bytes outside the Go heap: anonymous
// memory whose pages count only once touched, and which does not grow
// the heap the collector paces itself on. freeBuf returns it.
func allocBuf(n int) ([]byte, bool) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]byte, n), false
	}
	return b, true
}

func freeBuf(b []byte) { unix.Munmap(b[:cap(b)]) }

// trimBuf gives back the pages of b (a buffer allocBuf mapped) from keep
// on: one that held a large chunk does not stay that large while it
// holds small ones.
func trimBuf(b []byte, keep int) {
	page := os.Getpagesize()
	keep = (keep + page - 1) / page * page
	end := min(cap(b), (len(b)+page-1)/page*page)
	if keep < end {
		unix.Madvise(b[keep:end], unix.MADV_DONTNEED)
	}
}
