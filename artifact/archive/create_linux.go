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
	fd, err := openNew(int(d.Fd()), base)
	if tooFewFDs(err) && x.shed(dir) {
		fd, err = openNew(int(d.Fd()), base)
	}
	if err != nil {
		return nil, true, &fs.PathError{Op: "openat", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), true, nil
}

// openNew creates the file base in the directory dirfd, following no
// link and replacing nothing.
func openNew(dirfd int, base string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// dirBound is how many directories an unpacking keeps open: up to
// maxDirFiles, and half the descriptors the process may still open (its
// RLIMIT_NOFILE less those open now), the rest left to what the unpacking
// opens for a moment (the walk of a path through the root) and to the
// rest of the process.
func dirBound() int {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil || lim.Cur > 1<<20 {
		return maxDirFiles
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return maxDirFiles
	}
	return max(min(maxDirFiles, (int(lim.Cur)-len(open))/2), 1)
}
