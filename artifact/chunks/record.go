package chunks

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/dropshipd/dropship/artifact/archive"
)

// The record of a release's files on disk (Files.Save): a magic line, a
// gob head (which release, which skeleton, how many files), a gob body
// (the tar's chunks and holes), then the files, one after the other, in
// a compact binary form (varints). An install writes the files to a
// spool as it makes them (NewFilesSpooled) and Save puts the head before
// them: 13,193 files are never in memory at once. A record from before
// this format (one gob value) is still read.
var recordMagic = []byte("dropship-files 2\n")

type recordHead struct {
	Release, Owner, Tar string
	Skel                string
	SkelSize            int64
	SkelSHA256          string
	N                   int // files
}

type recordBody struct {
	Chunks []Chunk
	Holes  []Hole
}

// spool is where a record's files go as they are made.
type spool struct {
	f   *os.File
	w   *bufio.Writer
	buf []byte
	n   int
	err error
}

// spoolBuf: the spool's write buffer.
const spoolBuf = 16 << 10

// NewFilesSpooled starts the record of release, as NewFiles, but the
// files made are written to the file spoolPath as they are made instead
// of kept in memory; Save then writes the record from it (and removes
// it). Files stays nil.
func NewFilesSpooled(release, owner string, idx *Index, spoolPath string) *Files {
	f := &Files{Release: release, Owner: owner, Tar: idx.Tar.SHA256, Chunks: idx.Chunks}
	f.sp = &spool{}
	f.sp.f, f.sp.err = os.OpenFile(spoolPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if f.sp.err == nil {
		f.sp.w = bufio.NewWriterSize(f.sp.f, spoolBuf)
	}
	return f
}

func (s *spool) add(name string, rec File) {
	if s.err != nil {
		return
	}
	s.buf = appendFile(s.buf[:0], name, rec)
	if _, err := s.w.Write(s.buf); err != nil {
		s.err = err
	}
	s.n++
}

func appendFile(b []byte, name string, r File) []byte {
	b = binary.AppendUvarint(b, uint64(len(name)))
	b = append(b, name...)
	b = binary.AppendVarint(b, r.Off)
	b = binary.AppendVarint(b, r.Size)
	b = binary.AppendUvarint(b, uint64(r.Mode))
	b = binary.AppendVarint(b, r.Mtime)
	st := r.Stat
	b = binary.AppendUvarint(b, st.Dev)
	b = binary.AppendUvarint(b, st.Ino)
	b = binary.AppendVarint(b, st.Size)
	b = binary.AppendVarint(b, st.Mtime)
	b = binary.AppendUvarint(b, uint64(st.Mode))
	b = binary.AppendUvarint(b, uint64(st.UID))
	b = binary.AppendUvarint(b, uint64(st.GID))
	return binary.AppendVarint(b, st.Ctime)
}

// readFile reads one file of a record; name is read into buf.
func readFile(r *bufio.Reader, buf []byte) (string, File, []byte, error) {
	var rec File
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", rec, buf, err
	}
	if n > 1<<16 {
		return "", rec, buf, errors.New("a name over 64 KiB")
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", rec, buf, err
	}
	var vals [12]uint64
	signed := [12]bool{true, true, false, true, false, false, true, true, false, false, false, true}
	for i := range vals {
		if signed[i] {
			v, err := binary.ReadVarint(r)
			if err != nil {
				return "", rec, buf, err
			}
			vals[i] = uint64(v)
		} else if vals[i], err = binary.ReadUvarint(r); err != nil {
			return "", rec, buf, err
		}
	}
	rec = File{Off: int64(vals[0]), Size: int64(vals[1]), Mode: uint32(vals[2]), Mtime: int64(vals[3]),
		Stat: archive.FileStat{Dev: vals[4], Ino: vals[5], Size: int64(vals[6]), Mtime: int64(vals[7]),
			Mode: uint32(vals[8]), UID: uint32(vals[9]), GID: uint32(vals[10]), Ctime: int64(vals[11])}}
	return string(buf), rec, buf, nil
}

// Discard drops the spool of a record that is not to be saved (the
// install failed); nothing after Save.
func (f *Files) Discard() {
	if sp := f.sp; sp != nil {
		f.sp = nil
		if sp.f != nil {
			sp.f.Close()
			os.Remove(sp.f.Name())
		}
	}
}

// Len is the number of files recorded (a name made twice, by a later
// entry of the tar, counts twice).
func (f *Files) Len() int {
	if f.sp != nil {
		return f.sp.n
	}
	if f.Files == nil {
		return f.n
	}
	return len(f.Files)
}

// Save writes the record to path, through a temporary file and a rename.
// A spooled record's files are copied from its spool, which is removed.
func (f *Files) Save(path string) error {
	if sp := f.sp; sp != nil {
		f.sp, f.n = nil, sp.n
		defer func() {
			if sp.f != nil {
				sp.f.Close()
				os.Remove(sp.f.Name())
			}
		}()
		if sp.err == nil {
			sp.err = sp.w.Flush()
		}
		if sp.err == nil {
			_, sp.err = sp.f.Seek(0, io.SeekStart)
		}
		if sp.err != nil {
			return sp.err
		}
		err := f.write(path, sp.n, func(w io.Writer) error {
			_, err := io.Copy(w, sp.f)
			return err
		})
		if err == nil {
			f.saved = path
		}
		return err
	}
	return f.write(path, len(f.Files), func(w io.Writer) error {
		var b []byte
		for name, rec := range f.Files {
			b = appendFile(b[:0], name, rec)
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	})
}

func (f *Files) write(path string, n int, files func(io.Writer) error) error {
	// One name: a crash leaves at most this file, overwritten next time.
	tmp, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(tmp, 32<<10)
	w.Write(recordMagic)
	enc := gob.NewEncoder(w)
	err = enc.Encode(recordHead{Release: f.Release, Owner: f.Owner, Tar: f.Tar, Skel: f.Skel, SkelSize: f.SkelSize, SkelSHA256: f.SkelSHA256, N: n})
	if err == nil {
		err = enc.Encode(recordBody{Chunks: f.Chunks, Holes: f.Holes})
	}
	if err == nil {
		err = files(w)
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// openRecord opens the record at path and reads its head; old is the
// whole record when it is of the format before this one.
func openRecord(path string, whole bool) (r *bufio.Reader, c io.Closer, dec *gob.Decoder, h recordHead, old *Files, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, h, nil, err
	}
	r = bufio.NewReaderSize(fh, 32<<10)
	if m, _ := r.Peek(len(recordMagic)); !bytes.Equal(m, recordMagic) {
		var f Files
		if !whole {
			var h0 struct{ Release, Skel string }
			err = gob.NewDecoder(r).Decode(&h0)
			f.Release, f.Skel = h0.Release, h0.Skel
		} else {
			err = gob.NewDecoder(r).Decode(&f)
		}
		fh.Close()
		if err != nil {
			return nil, nil, nil, h, nil, err
		}
		return nil, nil, nil, h, &f, nil
	}
	r.Discard(len(recordMagic))
	dec = gob.NewDecoder(r)
	if err := dec.Decode(&h); err != nil {
		fh.Close()
		return nil, nil, nil, h, nil, err
	}
	return r, fh, dec, h, nil, nil
}

// LoadFiles reads the record Save wrote.
func LoadFiles(path string) (*Files, error) {
	r, c, dec, h, old, err := openRecord(path, true)
	if err != nil {
		return nil, err
	}
	if old != nil {
		if old.Files == nil {
			return nil, errors.New("no files recorded")
		}
		return old, nil
	}
	defer c.Close()
	var body recordBody
	if err := dec.Decode(&body); err != nil {
		return nil, err
	}
	f := &Files{Release: h.Release, Owner: h.Owner, Tar: h.Tar, Chunks: body.Chunks, Skel: h.Skel, SkelSize: h.SkelSize,
		Holes: body.Holes, SkelSHA256: h.SkelSHA256, Files: make(map[string]File, h.N)}
	var buf []byte
	for range h.N {
		var name string
		var rec File
		if name, rec, buf, err = readFile(r, buf); err != nil {
			return nil, fmt.Errorf("the record of the release's files: %w", err)
		}
		f.Files[name] = rec
	}
	return f, nil
}

// LoadFilesHead reads of the record Save wrote only which release and
// skeleton it is of: the files are skipped, not kept in memory.
func LoadFilesHead(path string) (*Files, error) {
	_, c, _, h, old, err := openRecord(path, false)
	if err != nil {
		return nil, err
	}
	if old != nil {
		return old, nil
	}
	c.Close()
	return &Files{Release: h.Release, Skel: h.Skel}, nil
}

// eachFile calls fn with each file of the record at path, which must be
// of release, until it returns false or an error. A name made twice (a
// later entry of the tar replacing a file) is given once, as made last.
func eachFile(path, release string, fn func(string, File) (bool, error)) error {
	_, c, _, h, old, err := openRecord(path, true)
	if err != nil {
		return err
	}
	if old != nil {
		if old.Release != release {
			return fmt.Errorf("the record of the release's files is of %s, not %s", old.Release, release)
		}
		for name, rec := range old.Files {
			if more, err := fn(name, rec); !more || err != nil {
				return err
			}
		}
		return nil
	}
	c.Close()
	if h.Release != release {
		return fmt.Errorf("the record of the release's files is of %s, not %s", h.Release, release)
	}
	// Two passes: which entry of each name is the last, then those.
	last := map[string]int{}
	if err := readFiles(path, func(i int, name string, _ File) (bool, error) {
		last[name] = i
		return true, nil
	}); err != nil {
		return err
	}
	return readFiles(path, func(i int, name string, rec File) (bool, error) {
		if last[name] != i {
			return true, nil
		}
		return fn(name, rec)
	})
}

// readFiles calls fn with each file of the record (of this format) at
// path, in the order they were made.
func readFiles(path string, fn func(int, string, File) (bool, error)) error {
	r, c, dec, h, _, err := openRecord(path, true)
	if err != nil {
		return err
	}
	defer c.Close()
	var body recordBody
	if err := dec.Decode(&body); err != nil {
		return err
	}
	body = recordBody{}
	var buf []byte
	for i := range h.N {
		name, rec, b, err := readFile(r, buf)
		if err != nil {
			return fmt.Errorf("the record of the release's files: %w", err)
		}
		buf = b
		if more, err := fn(i, name, rec); !more || err != nil {
			return err
		}
	}
	return nil
}
