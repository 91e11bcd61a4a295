package archive

import (
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setTimes sets the times of the open file f through its descriptor
// (futimens: utimensat with no path), saving the walk of the path that a
// Chtimes through the root takes, and the lookup of /proc/self/fd/N that
// x/sys's helpers take. It reports whether it did; the caller falls back
// otherwise.
func setTimes(f *os.File, t time.Time) bool {
	sc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ts := [2]unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	ok := false
	sc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, fd, 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		ok = e == 0
		if !ok {
			ok = unix.UtimesNano("/proc/self/fd/"+strconv.Itoa(int(fd)), ts[:]) == nil
		}
	})
	return ok
}
