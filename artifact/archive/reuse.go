package archive

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

// Entry is a regular file of a tar, as the extractor is about to make it:
// what Options.Reuse and Options.Made are told.
type Entry struct {
	Name   string      // cleaned, relative to the release
	Header *tar.Header // as read
	Offset int64       // of its content in the tar stream
	Mode   fs.FileMode // the mode it is given (file_mode, preserve_setuid applied)
}

// FileStat is what the file system says of a file made: what a later
// Reuse compares with the file it finds, to know it is still the one made.
type FileStat struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime"` // ns
	Mode  uint32 `json:"mode"`  // st_mode
	UID   uint32 `json:"uid"`
	GID   uint32 `json:"gid"`
	// Ctime is the inode's change time (ns): anything that writes to the
	// file, or changes its metadata, sets it to the clock, and no
	// application can put it back. Same leaves it out (linking a file,
	// or removing another link to it, changes it too).
	Ctime int64 `json:"ctime"`
}

// Same reports whether s and o say the same of a file, but for Ctime.
func (s FileStat) Same(o FileStat) bool {
	s.Ctime, o.Ctime = 0, 0
	return s == o
}

// ErrNoReuse: the system offers no safe way to link a file in (openat2,
// /proc): every file is written.
var ErrNoReuse = errors.New("files cannot be linked from a release here")

// reuse makes name a hard link to src (an O_PATH descriptor that Reuse
// opened and checked) instead of writing it: the parents and a previous
// entry of the same name are handled as for a file written. It reports
// false, nothing done, when the link cannot be made (another file
// system, say): the caller writes the file.
func (x *extractor) reuse(orig, name string, src *os.File, size int64) (bool, error) {
	if name == "." {
		return false, refuse(orig, "a file cannot be the release directory itself")
	}
	if size > x.opt.MaxSize-x.stats.Bytes {
		return false, refuse(orig, "declares %d bytes: unpacked size over max_size = %d bytes", size, x.opt.MaxSize)
	}
	if err := x.parentsOf(orig, name); err != nil {
		return false, err
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	d, err := x.dirFile(dir)
	if err != nil {
		return false, nil
	}
	err = linkAt(src, d, base)
	if errors.Is(err, fs.ErrExist) {
		if err := x.clear(orig, name, false); err != nil {
			return false, err
		}
		err = linkAt(src, d, base)
	}
	if err != nil {
		return false, nil
	}
	x.stats.Bytes += size
	return true, nil
}

// maxDirFiles bounds the directories kept open for linking files into.
const maxDirFiles = 512

// dirFile is the open directory dir of the release (kept, as create's
// roots are), to link files into.
func (x *extractor) dirFile(dir string) (*os.File, error) {
	if f, ok := x.dirFiles[dir]; ok {
		return f, nil
	}
	bound := maxDirFiles
	if x.dirCap > 0 {
		bound = x.dirCap
	}
	if len(x.dirFiles) >= bound {
		for d, f := range x.dirFiles { // one, any: a tree of more directories than the bound keeps most open
			f.Close()
			delete(x.dirFiles, d)
			break
		}
	}
	f, err := x.root.Open(dir)
	if tooFewFDs(err) && x.shed("") {
		f, err = x.root.Open(dir)
	}
	if err != nil {
		return nil, err
	}
	if x.dirFiles == nil {
		x.dirFiles = map[string]*os.File{}
	}
	x.dirFiles[dir] = f
	return f, nil
}

// tooFewFDs says whether err is the lack of a descriptor, the process's
// (its RLIMIT_NOFILE) or the system's.
func tooFewFDs(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// shed closes the directories kept open (but keep, in use), where the
// process has run out of descriptors: they are a saving, not a need, and
// a process allowed few (a service manager's LimitNOFILE, descriptors
// held for other services) unpacks a tree of many directories all the
// same. From then on it keeps half as many open. It reports whether it
// closed any.
func (x *extractor) shed(keep string) bool {
	n := 0
	for d, f := range x.dirFiles {
		if d != keep {
			f.Close()
			delete(x.dirFiles, d)
			n++
		}
	}
	for d, r := range x.dirRoots {
		r.Close()
		delete(x.dirRoots, d)
		n++
	}
	if n > 0 {
		x.dirCap = max(n/2, 1)
	}
	return n > 0
}

// seekSource is a tar stream that skips forward itself (the chunk
// cache's, which hashes what it skips without copying it out): the tar
// reader skips the content of a reused file through Seek. The bytes it
// skips count as read (max_ratio).
type seekSource struct {
	rs io.ReadSeeker
	c  *countReader
	n  int64 // position in the tar stream
}

func (s *seekSource) Read(p []byte) (int, error) {
	n, err := s.rs.Read(p)
	s.n += int64(n)
	s.c.n.Add(int64(n))
	return n, err
}

func (s *seekSource) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekCurrent || off < 0 {
		return 0, errors.New("seek: only forward")
	}
	if off == 0 {
		return s.n, nil
	}
	pos, err := s.rs.Seek(off, io.SeekCurrent)
	if pos > s.n {
		s.c.n.Add(pos - s.n)
		s.n = pos
	}
	return s.n, err
}

// posReader counts the position in a tar stream that cannot seek.
type posReader struct {
	r io.Reader
	n int64
}

func (p *posReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}
