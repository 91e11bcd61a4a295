//go:build !linux

package archive

import (
	"io/fs"
	"os"
)

func linkAt(src, d *os.File, base string) error { return ErrNoReuse }

// OpenBeneath: files are linked from a release on Linux only.
func OpenBeneath(dir *os.File, name string) (*os.File, error) { return nil, ErrNoReuse }

// Stat: see the Linux version.
func Stat(f *os.File) (FileStat, error) { return FileStat{}, ErrNoReuse }

// IsRegular reports whether s is a regular file's.
func (s FileStat) IsRegular() bool { return false }

// Perm: see the Linux version.
func (s FileStat) Perm() fs.FileMode { return 0 }
