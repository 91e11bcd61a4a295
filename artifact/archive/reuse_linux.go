package archive

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// linkAt hard-links the file open as src to base in directory d, through
// /proc/self/fd: the inode that was opened and checked, whatever its name
// has become since.
func linkAt(src, d *os.File, base string) error {
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(src.Fd())), int(d.Fd()), base, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.EEXIST) {
		return fs.ErrExist
	}
	return err
}

// OpenBeneath opens name under the directory dir as a path (O_PATH: no
// read access needed, nothing read), refusing any symlink on the way and
// any name leading out of dir or onto another file system.
func OpenBeneath(dir *os.File, name string) (*os.File, error) {
	fd, err := unix.Openat2(int(dir.Fd()), name, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if errors.Is(err, unix.ENOSYS) {
		return nil, ErrNoReuse
	}
	if err != nil {
		return nil, &fs.PathError{Op: "openat2", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Stat is f's FileStat.
func Stat(f *os.File) (FileStat, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return FileStat{}, err
	}
	return FileStat{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Mtime: st.Mtim.Nano(), Mode: st.Mode, UID: st.Uid, GID: st.Gid, Ctime: st.Ctim.Nano()}, nil
}

// IsRegular reports whether s is a regular file's.
func (s FileStat) IsRegular() bool { return s.Mode&syscall.S_IFMT == syscall.S_IFREG }

// Perm is the permission bits of s as an fs.FileMode (with setuid,
// setgid, sticky).
func (s FileStat) Perm() fs.FileMode {
	m := fs.FileMode(s.Mode & 0o777)
	if s.Mode&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if s.Mode&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if s.Mode&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
