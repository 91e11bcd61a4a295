package archive

import (
	"io/fs"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// createAt makes the new file base in the directory dir of the release
// (opened through the root and kept, dirFile) with one openat, and wraps
// its descriptor with os.NewFile: a file opened through os.Root is also
// offered to the runtime's poller, which refuses a regular file after
// four fcntl calls and an epoll_ctl, five system calls per file for
// nothing. O_EXCL with O_CREAT follows no link and replaces nothing; base
// is one name (no slash, never ".."). ok is false where the directory
// cannot be opened this way: the caller goes through the root.
func (x *extractor) createAt(dir, base string) (f *os.File, ok bool, err error) {
	d, err := x.dirFile(dir)
	if err != nil {
		return nil, false, nil
	}
	name := path.Join(dir, base)
	var fd int
	for {
		fd, err = unix.Openat(int(d.Fd()), base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, true, &fs.PathError{Op: "openat", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), true, nil
}
