package chunks

import (
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// readBack: a release's files can be read back, confined (openat2).
const readBack = true

// openRead opens name beneath the directory dir to read it: no symlink
// followed, nothing outside dir, no other file system, and nothing but a
// regular file (a FIFO swapped in does not block the open).
func openRead(dir *os.File, name string) (*os.File, error) {
	fd, err := unix.Openat2(int(dir.Fd()), name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return nil, &fs.PathError{Op: "openat2", Path: name, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("not a regular file")}
	}
	return os.NewFile(uintptr(fd), name), nil
}
