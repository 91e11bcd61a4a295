package chunks

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"

	"github.com/dropshipd/dropship/artifact/archive"
)

// Files records the regular files of an installed release made from a
// tar with an index: where each one's content lay in that tar, and what
// the file system said of it once made. A delta to the next release
// links from it the files whose bytes and metadata did not change (see
// Reuser) instead of writing them again.
type Files struct {
	Release string `json:"release"` // the release directory's name
	// Owner says who the files were made for and by (the unpack options'
	// uid and gid, the agent's): files made for another are not linked.
	Owner  string          `json:"owner"`
	Tar    string          `json:"tar"`    // the SHA-256 of its tar
	Chunks []Chunk         `json:"chunks"` // of its tar, in order
	Files  map[string]File `json:"files"`
	// Skel names the skeleton of its tar in the cache (Skeleton), SkelSize
	// its size, and Holes the regular files' content it leaves out; none:
	// the release cannot back a delta.
	Skel     string `json:"skel,omitempty"`
	SkelSize int64  `json:"skel_size,omitempty"`
	Holes    []Hole `json:"holes,omitempty"`
	// SkelSHA256 is the SHA-256 of the skeleton: checked once by a delta
	// that trusts files of the release by their identity (Backing).
	SkelSHA256 string `json:"skel_sha256,omitempty"`

	// sp: the files are written to a spool file as they are made, not
	// kept (NewFilesSpooled); saved: the file Save wrote them to.
	sp    *spool
	n     int // files, once spooled and saved
	saved string
}

// File is one regular file of a release, as its tar made it.
type File struct {
	Off   int64            `json:"off"`   // of its content in the tar
	Size  int64            `json:"size"`  // the header's
	Mode  uint32           `json:"mode"`  // the fs.FileMode it was given
	Mtime int64            `json:"mtime"` // the header's, ns
	Stat  archive.FileStat `json:"stat"`  // once made
}

// NewFiles starts the record of release, made from the tar idx describes,
// held in memory.
func NewFiles(release, owner string, idx *Index) *Files {
	return &Files{Release: release, Owner: owner, Tar: idx.Tar.SHA256, Chunks: idx.Chunks, Files: map[string]File{}}
}

// Made records a file made: the archive.Options.Made of the extraction.
// A record spooled (NewFilesSpooled) writes it to its spool file instead
// of keeping it.
func (f *Files) Made(e *archive.Entry, st archive.FileStat) {
	rec := File{Off: e.Offset, Size: e.Header.Size, Mode: uint32(e.Mode), Mtime: e.Header.ModTime.UnixNano(), Stat: st}
	if f.sp != nil {
		f.sp.add(e.Name, rec)
		return
	}
	f.Files[e.Name] = rec
}

// Reuser offers, for each regular file of a new release's tar, the same
// file of the current release when it can be hard-linked instead of
// written: the archive.Options.Reuse of a delta. A file is offered only
// when
//
//   - the current release's record has a regular file of that name, with
//     the same size, mode (as it is given now), modification time in the
//     header, and owner;
//   - its content lay in the current release's tar in the same chunks
//     (by SHA-256), at the same offset in the first, as the new entry's
//     content in the new tar: the same bytes;
//   - the file found there now, opened beneath the release directory
//     without following any symlink (openat2), is still the inode made:
//     same device, inode, size, modification time to the nanosecond,
//     mode and owner. A file written since, or replaced, is not that one;
//     it is written again from the tar;
//   - when its change time moved too (not trusted by its identity: see
//     Backing), every chunk holding it is read back from it by the
//     delta (Backing.Has, and no other copy of the chunk before it in
//     the tar), so that its bytes are hashed.
//
// The new tar is still read and checked whole, chunk by chunk, a linked
// file's bytes read back from that very file: a linked file found not to
// hold the chunk's bytes (Overlaps) fails the delta.
type Reuser struct {
	old    *Files
	dir    *os.File
	idx    *Index
	oldOff []int64
	newOff []int64
	off    bool
	Linked int   // files linked
	Bytes  int64 // their content
	linked []linkedFile
	// first is the offset of the first chunk of the current release's
	// tar with each SHA-256: the one a delta reads that chunk back from.
	first map[string]int64
	// Backing is what the delta reads the current release's chunks back
	// from; nil: none, and a file not trusted by its identity is never
	// linked.
	Backing *Backing
	// trusted: the files linked that were trusted by their identity, change
	// time included, when they were linked (which moved it).
	trusted map[string]bool
}

type linkedFile struct {
	name string
	Hole
}

// NewReuser offers the files of old, a release in the directory dir, to
// the extraction of the tar idx describes. Close it after.
func NewReuser(old *Files, dir string, idx *Index) (*Reuser, error) {
	d, err := openRelease(dir)
	if err != nil {
		return nil, err
	}
	r := &Reuser{old: old, dir: d, idx: idx, oldOff: offsets(old.Chunks), newOff: offsets(idx.Chunks), first: map[string]int64{}}
	for i, ch := range old.Chunks {
		if _, ok := r.first[ch.SHA256]; !ok {
			r.first[ch.SHA256] = r.oldOff[i]
		}
	}
	return r, nil
}

func offsets(cs []Chunk) []int64 {
	out := make([]int64, len(cs)+1)
	for i, c := range cs {
		out[i+1] = out[i] + c.Size
	}
	return out
}

// Close closes the release directory.
func (r *Reuser) Close() error { return r.dir.Close() }

// Reuse: see Reuser.
func (r *Reuser) Reuse(e *archive.Entry) *os.File {
	h := e.Header
	if r.off || h.Size <= 0 || h.ModTime.IsZero() {
		return nil
	}
	f, ok := r.old.Files[e.Name]
	if !ok || f.Size != h.Size || f.Mode != uint32(e.Mode) || f.Mtime != h.ModTime.UnixNano() ||
		!r.sameBytes(f.Off, e.Offset, h.Size) {
		return nil
	}
	src, err := archive.OpenBeneath(r.dir, e.Name)
	if errors.Is(err, archive.ErrNoReuse) {
		r.off = true
		return nil
	}
	if err != nil {
		return nil
	}
	st, err := archive.Stat(src)
	if err != nil || !st.Same(f.Stat) || !st.IsRegular() || st.Perm() != e.Mode {
		src.Close()
		return nil
	}
	if st.Ctime != f.Stat.Ctime && !r.readBack(f.Off, h.Size) {
		// Not trusted by its identity, and a chunk of it is read back
		// from elsewhere in the release (another copy of the same
		// bytes): nothing would check what this file holds.
		src.Close()
		return nil
	}
	if st == f.Stat {
		if r.trusted == nil {
			r.trusted = map[string]bool{}
		}
		r.trusted[e.Name] = true
	}
	r.Linked++
	r.Bytes += h.Size
	r.linked = append(r.linked, linkedFile{e.Name, Hole{e.Offset, h.Size}})
	return src
}

// LinkedTrusted reports whether name was linked while it was trusted by
// its identity, change time included: the change time the link moved is
// then the link's doing (Backing.Relinked). A file whose change time had
// moved before is not vouched for by the link; its chunks are read back
// and hashed.
func (r *Reuser) LinkedTrusted(name string) bool { return r.trusted[name] }

// Overlaps names a file linked whose content in the new tar overlaps one
// of the ranges (sorted by offset) given.
func (r *Reuser) Overlaps(ranges []Hole) (string, bool) {
	for _, l := range r.linked {
		i := sort.Search(len(ranges), func(k int) bool { return ranges[k].Off+ranges[k].Size > l.Off })
		if i < len(ranges) && ranges[i].Off < l.Off+l.Size {
			return l.name, true
		}
	}
	return "", false
}

// readBack reports whether every chunk holding the n bytes at a in the
// current release's tar is read back by the delta (Backing.Has: not
// fetched) from that place (the first chunk of the tar with its
// SHA-256), not from another copy of it.
func (r *Reuser) readBack(a, n int64) bool {
	if r.Backing == nil {
		return false
	}
	i := sort.Search(len(r.oldOff), func(k int) bool { return r.oldOff[k] > a }) - 1
	for ; i >= 0 && i < len(r.old.Chunks) && r.oldOff[i] < a+n; i++ {
		if ch := r.old.Chunks[i]; r.first[ch.SHA256] != r.oldOff[i] || !r.Backing.Has(ch) {
			return false
		}
	}
	return i >= 0
}

// sameBytes reports whether the n bytes at a in the current release's
// tar and at b in the new one lie in the same chunks at the same offsets.
func (r *Reuser) sameBytes(a, b, n int64) bool {
	if a < 0 || b < 0 || a+n > r.oldOff[len(r.oldOff)-1] || b+n > r.newOff[len(r.newOff)-1] {
		return false
	}
	i := sort.Search(len(r.oldOff), func(k int) bool { return r.oldOff[k] > a }) - 1
	j := sort.Search(len(r.newOff), func(k int) bool { return r.newOff[k] > b }) - 1
	if i < 0 || j < 0 || a-r.oldOff[i] != b-r.newOff[j] {
		return false
	}
	for ; r.oldOff[i] < a+n; i, j = i+1, j+1 {
		if i >= len(r.old.Chunks) || j >= len(r.idx.Chunks) || r.old.Chunks[i].SHA256 != r.idx.Chunks[j].SHA256 || r.old.Chunks[i].Size != r.idx.Chunks[j].Size {
			return false
		}
	}
	return true
}

// Check reports the first file of the record that the directory dir (the
// release it describes) no longer holds as made: another inode, or a
// size, modification time, mode or owner that changed. A release linked
// from another shares its inodes: a write to them there since shows here.
// A spooled record is read back from the file Save wrote, one file at a
// time; one that cannot be read back, or is of another release, fails.
func (f *Files) Check(dir string) error {
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	check := func(name string, rec File) (bool, error) {
		src, err := archive.OpenBeneath(d, name)
		if errors.Is(err, archive.ErrNoReuse) {
			return false, nil // nothing was linked
		}
		if err != nil {
			return false, err
		}
		st, err := archive.Stat(src)
		src.Close()
		if err != nil {
			return false, err
		}
		if !st.Same(rec.Stat) {
			return false, fmt.Errorf("%s changed since it was made (a file linked from the current release, written since?)", name)
		}
		return true, nil
	}
	if f.Files == nil {
		if f.saved == "" {
			return errors.New("the record of the release's files was not saved")
		}
		return eachFile(f.saved, f.Release, check)
	}
	for name, rec := range f.Files {
		if more, err := check(name, rec); !more || err != nil {
			return err
		}
	}
	return nil
}
