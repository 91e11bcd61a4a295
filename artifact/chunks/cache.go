package chunks

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/dropshipd/dropship/artifact"
)

// Cache holds uncompressed chunks, one file per chunk named by its
// SHA-256, in a directory of the service's state. It is bounded: Keep
// leaves at most Max bytes, the chunks of the release just installed.
type Cache struct {
	Dir    string
	Max    int64
	Logger *slog.Logger
}

func (c *Cache) path(sum string) string { return filepath.Join(c.Dir, sum) }

func (c *Cache) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Has reports whether the chunk is cached with the size expected.
func (c *Cache) Has(ch Chunk) bool {
	fi, err := os.Stat(c.path(ch.SHA256))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == ch.Size
}

// Missing returns the chunks of idx the cache lacks, each once, and the
// bytes they take in the store.
func (c *Cache) Missing(idx *Index) ([]Chunk, int64) {
	var out []Chunk
	var stored int64
	seen := map[string]bool{}
	for _, ch := range idx.Chunks {
		if seen[ch.SHA256] {
			continue
		}
		seen[ch.SHA256] = true
		if !c.Has(ch) {
			out = append(out, ch)
			stored += ch.Stored
		}
	}
	return out, stored
}

// Keep removes every file that is not a chunk of idx, then chunks of idx
// (the last in the tar first) until the cache holds at most Max bytes.
func (c *Cache) Keep(idx *Index) error {
	want := map[string]bool{}
	for _, ch := range idx.Chunks {
		want[ch.SHA256] = true
	}
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return err
	}
	var total int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if !want[e.Name()] || !fi.Mode().IsRegular() {
			os.RemoveAll(c.path(e.Name()))
			continue
		}
		total += fi.Size()
	}
	for i := len(idx.Chunks) - 1; i >= 0 && total > c.Max; i-- {
		ch := idx.Chunks[i]
		if fi, err := os.Stat(c.path(ch.SHA256)); err == nil {
			if os.Remove(c.path(ch.SHA256)) == nil {
				total -= fi.Size()
			}
		}
	}
	return nil
}

// Clear empties the cache (a chunk in it was found wrong).
func (c *Cache) Clear() error {
	ents, err := os.ReadDir(c.Dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range ents {
		os.RemoveAll(c.path(e.Name()))
	}
	return nil
}

// Size is the bytes the cache holds.
func (c *Cache) Size() int64 {
	var n int64
	filepath.WalkDir(c.Dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// Stream returns the tar idx describes, read from the cache in order. At
// its end it compares the tar's size and SHA-256 with the index's: a
// mismatch is an error wrapping artifact.ErrCorrupt instead of io.EOF, so
// nothing unpacked from it is taken for a release. The chunks are read
// and hashed by a goroutine of their own, a few blocks ahead, in blocks
// of up to 512 KiB; Seek (forward only) skips bytes without copying them
// out, hashed all the same, and WriteTo hands the blocks over as read.
func (c *Cache) Stream(idx *Index) io.ReadCloser {
	return &stream{c: c, idx: idx, h: sha256.New()}
}

const (
	streamBlock = 512 << 10
	streamAhead = 4
)

// mapBlocks: the stream maps chunk files where it can (tests turn it off
// to read them).
var mapBlocks = true

type block struct {
	b      []byte
	buf    []byte // the buffer from free that b is, or (nil) the token that stands for b's mapping
	mapped bool   // b is a mapping of the chunk file, unmapped once read
	err    error  // the stream's end: io.EOF, or why it stopped
}

type stream struct {
	c      *Cache
	idx    *Index
	h      hash.Hash // the reading goroutine's
	n      int64     // read, by the reading goroutine
	start  sync.Once
	blocks chan block
	free   chan []byte
	done   chan struct{}
	wg     sync.WaitGroup
	cur    []byte // unread part of the current block
	blk    block  // the current block: its buffer is returned to free once read
	pos    int64
	err    error
	closed bool
}

func (s *stream) run() {
	s.blocks = make(chan block, streamAhead)
	s.free = make(chan []byte, streamAhead+1)
	s.done = make(chan struct{})
	for range streamAhead + 1 {
		s.free <- nil // a buffer is made only where a block cannot be mapped
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.read()
		if err == nil {
			err = s.check()
		}
		if err == nil {
			err = io.EOF
		}
		select {
		case s.blocks <- block{err: err}:
		case <-s.done:
		}
	}()
}

// read reads and hashes every chunk in order, handing the blocks over.
func (s *stream) read() error {
	var n int64
	for i, ch := range s.idx.Chunks {
		f, err := os.Open(s.c.path(ch.SHA256))
		if err != nil {
			return fmt.Errorf("%w: chunk %d (%.16s…) is not in the cache: %v", artifact.ErrCorrupt, i, ch.SHA256, err)
		}
		if fi, err := f.Stat(); err != nil || fi.Size() < ch.Size {
			f.Close()
			return fmt.Errorf("%w: chunk %d (%.16s…) in the cache is shorter than its size", artifact.ErrCorrupt, i, ch.SHA256)
		}
		left := ch.Size
		for left > 0 {
			var buf []byte
			select {
			case buf = <-s.free:
			case <-s.done:
				f.Close()
				return io.ErrClosedPipe
			}
			want := min(streamBlock, left)
			// Mapped, the bytes are hashed and skipped without a copy;
			// read into the buffer where that cannot be done.
			var k int
			var err error
			var b []byte
			mapped := false
			if mapBlocks {
				b, mapped = mapBlock(f, ch.Size-left, int(want))
			}
			if mapped {
				k = len(b)
			} else {
				if buf == nil {
					buf = make([]byte, streamBlock)
				}
				b = buf[:want]
				k, err = f.ReadAt(b, ch.Size-left)
				b = b[:k]
			}
			s.h.Write(b)
			n += int64(k)
			left -= int64(k)
			if k > 0 {
				select {
				case s.blocks <- block{b: b, buf: buf, mapped: mapped}:
				case <-s.done:
					if mapped {
						unmapBlock(b)
					}
					f.Close()
					return io.ErrClosedPipe
				}
			} else {
				s.free <- buf
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				f.Close()
				return fmt.Errorf("%w: chunk %d (%.16s…) in the cache is shorter than its size", artifact.ErrCorrupt, i, ch.SHA256)
			}
			if err != nil {
				f.Close()
				return err
			}
		}
		f.Close()
	}
	s.n = n
	return nil
}

// next makes the next block current; false at the end (s.err set).
func (s *stream) next() bool {
	if s.err != nil {
		return false
	}
	s.start.Do(s.run)
	s.release()
	b := <-s.blocks
	if b.err != nil {
		s.err = b.err
		return false
	}
	s.blk, s.cur = b, b.b
	return true
}

func (s *stream) Read(p []byte) (int, error) {
	for len(s.cur) == 0 {
		if !s.next() {
			return 0, s.err
		}
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	s.pos += int64(n)
	return n, nil
}

// Seek skips forward (whence io.SeekCurrent, off >= 0 only): the bytes
// are read and hashed, not copied out.
func (s *stream) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekCurrent || off < 0 {
		return s.pos, errors.New("chunk stream: seek forward only")
	}
	for off > 0 {
		if len(s.cur) == 0 && !s.next() {
			if s.err == io.EOF {
				return s.pos, nil // the read that follows says it
			}
			return s.pos, s.err
		}
		k := min(off, int64(len(s.cur)))
		s.cur = s.cur[k:]
		s.pos += k
		off -= k
	}
	return s.pos, nil
}

// WriteTo writes the rest of the stream to w, block by block.
func (s *stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(s.cur) == 0 && !s.next() {
			if s.err == io.EOF {
				return total, nil
			}
			return total, s.err
		}
		n, err := w.Write(s.cur)
		s.cur = s.cur[n:]
		s.pos += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

func (s *stream) check() error {
	if got := hex.EncodeToString(s.h.Sum(nil)); s.n != s.idx.Tar.Size || got != s.idx.Tar.SHA256 {
		return fmt.Errorf("%w: the tar made of the chunks has %d bytes and SHA-256 %s; the index says %d bytes, %s",
			artifact.ErrCorrupt, s.n, got, s.idx.Tar.Size, s.idx.Tar.SHA256)
	}
	return nil
}

// release is done with the current block.
func (s *stream) release() {
	if s.blk.b == nil {
		return
	}
	if s.blk.mapped {
		unmapBlock(s.blk.b)
	}
	s.free <- s.blk.buf[:cap(s.blk.buf)]
	s.blk, s.cur = block{}, nil
}

func (s *stream) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.done != nil {
		close(s.done)
		s.wg.Wait()
		s.release()
		for {
			select {
			case b := <-s.blocks:
				s.blk = b
				s.release()
				continue
			default:
			}
			break
		}
	}
	if s.err == nil {
		s.err = io.ErrClosedPipe
	}
	return nil
}

// Filler cuts a tar stream written to it at the sizes of the index's
// chunks and keeps them, up to the cache's bound: the Tee of an archive
// install, so that the next release can be a delta. The pieces are not
// hashed again: they are named by the index only by Commit, once the
// archive they come from has been verified against the version pinned,
// which the index was made from (Index.Fits). An index that lied about
// them is caught where the cache is used: the tar reassembled from it
// would not have the SHA-256 of the next index. It never fails the
// install: a problem of its own stops it, logged.
func (c *Cache) Filler(idx *Index) *Filler {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		c.logger().Warn("chunk cache off for this install", "dir", c.Dir, "error", err)
		return &Filler{off: true}
	}
	f := &Filler{c: c, idx: idx}
	f.budget = c.Max - c.Size()
	return f
}

// Filler: see Cache.Filler.
type Filler struct {
	c      *Cache
	idx    *Index
	i      int   // current chunk
	got    int64 // bytes of it seen
	skip   bool  // current chunk: cached already, or over budget
	tmp    *os.File
	w      *bufio.Writer // to tmp: the tar reader reads headers 512 bytes at a time; content of 32 KiB or more goes straight to the file, uncopied
	done   []pending     // written, named at Commit
	budget int64
	off    bool
	Kept   int // chunks Commit put in the cache
}

type pending struct{ tmp, sum string }

func (f *Filler) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !f.off {
		if f.i >= len(f.idx.Chunks) {
			f.stop("the tar is longer than its index says")
			break
		}
		ch := f.idx.Chunks[f.i]
		if f.got == 0 {
			f.skip = f.c.Has(ch) || ch.Size > f.budget
			if !f.skip {
				t, err := os.CreateTemp(f.c.Dir, ".fill-*")
				if err != nil {
					f.stop(err.Error())
					break
				}
				f.tmp = t
				if f.w == nil {
					f.w = bufio.NewWriterSize(t, 32<<10)
				}
				f.w.Reset(t)
				f.budget -= ch.Size
			}
		}
		take := min(int64(len(p)), ch.Size-f.got)
		if !f.skip {
			if _, err := f.w.Write(p[:take]); err != nil {
				f.stop(err.Error())
				break
			}
		}
		f.got += take
		p = p[take:]
		if f.got == ch.Size {
			f.i++
			f.got = 0
			if !f.skip {
				t := f.tmp
				f.tmp = nil
				err := f.w.Flush()
				if cerr := t.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(t.Name())
					f.stop(err.Error())
					break
				}
				f.done = append(f.done, pending{t.Name(), ch.SHA256})
			}
		}
	}
	return n, nil
}

func (f *Filler) stop(why string) {
	if f.tmp != nil {
		f.tmp.Close()
		os.Remove(f.tmp.Name())
		f.tmp = nil
	}
	if !f.off && why != "" {
		f.c.logger().Warn("stopped filling the chunk cache", "reason", why)
	}
	f.off = true
}

// Commit names the chunks written after the archive they were cut from
// was verified: each whole chunk becomes the cache's copy of it.
func (f *Filler) Commit() {
	f.stop("")
	for _, p := range f.done {
		if err := os.Rename(p.tmp, f.c.path(p.sum)); err == nil {
			f.Kept++
		} else {
			os.Remove(p.tmp)
		}
	}
	f.done = nil
}

// Close drops what was written and not committed (a failed install).
func (f *Filler) Close() error {
	f.stop("")
	for _, p := range f.done {
		os.Remove(p.tmp)
	}
	f.done = nil
	return nil
}
