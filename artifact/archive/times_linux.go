package archive

import (
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// setTimes sets the times of the open file f through its descriptor
// (/proc/self/fd), saving the walk of the path that a Chtimes through the
// root takes. It reports whether it did; the caller falls back otherwise.
func setTimes(f *os.File, t time.Time) bool {
	sc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	ok := false
	sc.Control(func(fd uintptr) {
		ok = unix.UtimesNano("/proc/self/fd/"+strconv.Itoa(int(fd)), ts) == nil
	})
	return ok
}
