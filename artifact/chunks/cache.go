package chunks

import (
	"bytes"
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
	"slices"
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

// Missing returns the chunks of idx that neither the cache nor b (nil:
// none) holds, each once, and the bytes they take in the store.
func (c *Cache) Missing(idx *Index, b *Backing) ([]Chunk, int64) {
	var out []Chunk
	var stored int64
	seen := map[string]bool{}
	for _, ch := range idx.Chunks {
		if seen[ch.SHA256] {
			continue
		}
		seen[ch.SHA256] = true
		if !c.Has(ch) && !b.Has(ch) {
			out = append(out, ch)
			stored += ch.Stored
		}
	}
	return out, stored
}

// Settle leaves in the cache only the skeletons named keep: after an
// install, the release holds the content of the chunks fetched for it,
// and its skeleton the rest of its tar.
func (c *Cache) Settle(keep ...string) error {
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		if !slices.Contains(keep, e.Name()) {
			os.RemoveAll(c.path(e.Name()))
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

// Stream returns the tar idx describes, read from the cache in order,
// each chunk checked against its SHA-256 before any of its bytes is
// handed over: a mismatch is an error wrapping artifact.ErrCorrupt, so
// nothing unpacked from it is taken for a release. The chunks' sizes add
// up to the tar's (Parse), so a tar whose every chunk matches is the
// tar the index describes.
func (c *Cache) Stream(idx *Index) io.ReadCloser {
	return c.StreamWith(idx, StreamOptions{})
}

// StreamOptions: where a stream finds the chunks the cache lacks.
type StreamOptions struct {
	// Backing reads a chunk back from the current release; one that does
	// not match its SHA-256 is fetched.
	Backing *Backing
	// Fetch gets a chunk into the cache (Fetcher.One): one the cache and
	// the backing lack, or whose copy there does not match. Nil: such a
	// chunk is an error.
	Fetch func(Chunk) error
	// Tee is written every chunk, checked, in order (a Skeleton).
	Tee io.Writer
}

// StreamWith is Stream, with chunks read back from a release and fetched
// from the store where the cache lacks them.
func (c *Cache) StreamWith(idx *Index, opt StreamOptions) *Stream {
	return &Stream{c: c, idx: idx, opt: opt, h: sha256.New()}
}

// streamAhead: chunks checked ahead of the one being unpacked. Each is
// whole in memory (up to 8 MiB) until it is: one ahead keeps two.
const streamAhead = 1

// mapBlocks: the stream maps chunk files where it can (tests turn it off
// to read them).
var mapBlocks = true

type block struct {
	b      []byte
	buf    []byte // the buffer from free that b is in
	mapped bool   // b is a mapping of the chunk file, unmapped once read
	anon   bool   // buf is a buffer alloc mapped
	err    error  // the stream's end: io.EOF, or why it stopped
	// lazy are the pieces of b left unread, in order: trusted files of
	// the current release hold them (Backing.ReadTrusted), read only
	// when the unpacking reads them.
	lazy []lazy
}

// Stream: see Cache.StreamWith.
type Stream struct {
	c      *Cache
	idx    *Index
	opt    StreamOptions
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
	// Replaced are the bytes (their place in the tar) that the backing
	// held otherwise than the chunks fetched instead: read them once the
	// stream is closed.
	Replaced []Hole
	// Backed is how many chunks came from the backing; Trusted, how
	// many of them were not hashed, every file holding them trusted.
	Backed, Trusted int
	bufs            [][]byte // mapped by alloc
	lz              []lazy   // the lazy pieces of the chunk get returned
	lzFile          *os.File // the unpacking's: the file lazy pieces are read from
	lzHole          int
}

func (s *Stream) run() {
	s.blocks = make(chan block, streamAhead)
	s.free = make(chan []byte, streamAhead+1)
	s.done = make(chan struct{})
	for range streamAhead + 1 {
		s.free <- nil // a buffer is made only where a chunk cannot be mapped
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.read()
		if err == nil && s.n != s.idx.Tar.Size {
			err = fmt.Errorf("%w: the tar made of the chunks has %d bytes; the index says %d", artifact.ErrCorrupt, s.n, s.idx.Tar.Size)
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

// read gets, checks and hands over every chunk in order.
func (s *Stream) read() error {
	var off int64
	for i, ch := range s.idx.Chunks {
		var buf []byte
		select {
		case buf = <-s.free:
		case <-s.done:
			return io.ErrClosedPipe
		}
		b, buf, mapped, err := s.get(i, ch, off, buf)
		lz := s.lz
		s.lz = nil
		if err == nil && s.opt.Tee != nil {
			lz, err = s.tee(b, lz)
		}
		if err != nil {
			s.free <- buf
			return err
		}
		s.n += int64(len(b))
		off += ch.Size
		select {
		case s.blocks <- block{b: b, buf: buf, mapped: mapped, anon: !mapped && s.owned(buf), lazy: lz}:
		case <-s.done:
			if mapped {
				unmapBlock(b)
			}
			return io.ErrClosedPipe
		}
	}
	return nil
}

// get returns the checked bytes of chunk i (at off in the tar): from
// the cache, else the backing, else fetched (once more when the cache's
// copy does not match).
func (s *Stream) get(i int, ch Chunk, off int64, buf []byte) (b, _ []byte, mapped bool, err error) {
	fetched := false
	if !s.c.Has(ch) && s.opt.Backing.Has(ch) {
		if cap(buf) < int(ch.Size) {
			buf = s.alloc()
		}
		b = buf[:ch.Size]
		if lz, ok := s.opt.Backing.ReadTrusted(ch, b); ok {
			s.Backed++
			s.Trusted++
			s.lz = lz
			return b, buf, false, nil
		}
		rerr := s.opt.Backing.ReadChunk(ch, b)
		if rerr == nil && s.sum(b) == ch.SHA256 {
			s.Backed++
			return b, buf, false, nil
		}
		why := "its bytes are not the chunk's"
		if rerr != nil {
			why = rerr.Error()
		}
		s.c.logger().Info("chunk not read back from the current release; fetching it", "chunk", i, "sha256", ch.SHA256, "reason", why)
		bad := append([]byte(nil), b...)
		if err := s.fetch(ch); err != nil {
			return nil, buf, false, err
		}
		fetched = true
		b, buf, mapped, err = s.cached(i, ch, buf)
		if err == nil {
			s.differ(off, bad, b)
		}
		return b, buf, mapped, err
	}
	for {
		b, buf, mapped, err = s.cached(i, ch, buf)
		if err == nil || fetched || s.opt.Fetch == nil {
			return b, buf, mapped, err
		}
		os.Remove(s.c.path(ch.SHA256))
		if ferr := s.fetch(ch); ferr != nil {
			return nil, buf, false, fmt.Errorf("%w (fetched after: %v)", err, ferr)
		}
		fetched = true
	}
}

// tee writes chunk b to the Tee. Its lazy pieces that the tee takes as
// a regular file's content (a Skeleton leaves them out) are skipped;
// any other is read first. It returns the pieces still unread.
func (s *Stream) tee(b []byte, lz []lazy) ([]lazy, error) {
	sk, _ := s.opt.Tee.(interface{ Skip(int64) bool })
	var keep []lazy
	at := 0
	for _, l := range lz {
		if at < l.at {
			s.opt.Tee.Write(b[at:l.at])
		}
		if sk != nil && sk.Skip(int64(l.n)) {
			keep = append(keep, l)
		} else {
			if err := s.opt.Backing.fill(l, b[l.at:l.at+l.n]); err != nil {
				return nil, err
			}
			s.opt.Tee.Write(b[l.at : l.at+l.n])
		}
		at = l.at + l.n
	}
	s.opt.Tee.Write(b[at:])
	return keep, nil
}

// readLazy reads, for the unpacking, p from k bytes into the lazy piece l.
func (s *Stream) readLazy(l lazy, p []byte, k int) error {
	if s.lzFile == nil || s.lzHole != l.hole {
		if s.lzFile != nil {
			s.lzFile.Close()
			s.lzFile = nil
		}
		f, err := s.opt.Backing.openTrusted(l.hole)
		if err != nil {
			return err
		}
		s.lzFile, s.lzHole = f, l.hole
	}
	if n, err := s.lzFile.ReadAt(p, l.off+int64(k)); n != len(p) {
		return fmt.Errorf("%w: a file of the current release, read back: %v", artifact.ErrCorrupt, err)
	}
	return nil
}

// fillLazy reads the current block's lazy pieces into it.
func (s *Stream) fillLazy() error {
	for _, l := range s.blk.lazy {
		if err := s.readLazy(l, s.blk.b[l.at:l.at+l.n], 0); err != nil {
			return err
		}
	}
	s.blk.lazy = nil
	return nil
}

// differ records in Replaced where the bytes the release held (bad) for
// the chunk at off in the tar are not the chunk's (good).
func (s *Stream) differ(off int64, bad, good []byte) {
	const blk = 4 << 10
	for at := 0; at < len(good); at += blk {
		end := min(at+blk, len(good))
		if bytes.Equal(bad[at:end], good[at:end]) {
			continue
		}
		i, j := at, end-1
		for bad[i] == good[i] {
			i++
		}
		for bad[j] == good[j] {
			j--
		}
		h := Hole{Off: off + int64(i), Size: int64(j - i + 1)}
		if n := len(s.Replaced); n > 0 && s.Replaced[n-1].Off+s.Replaced[n-1].Size >= h.Off {
			s.Replaced[n-1].Size = h.Off + h.Size - s.Replaced[n-1].Off
			continue
		}
		s.Replaced = append(s.Replaced, h)
	}
}

// bufKeep: a buffer keeps this much resident between chunks; the pages
// a larger chunk took are given back once it is read.
const bufKeep = 1 << 20

// owned reports whether b is a buffer alloc mapped; the reading
// goroutine's.
func (s *Stream) owned(b []byte) bool {
	for _, m := range s.bufs {
		if cap(b) > 0 && &b[:1][0] == &m[:1][0] {
			return true
		}
	}
	return false
}

// alloc makes a buffer that holds any chunk, once per token: outside
// the heap where it can, unmapped by Close.
func (s *Stream) alloc() []byte {
	b, mapped := allocBuf(MaxChunk)
	if mapped {
		s.bufs = append(s.bufs, b)
	}
	return b
}

func (s *Stream) fetch(ch Chunk) error {
	if s.opt.Fetch == nil {
		return fmt.Errorf("%w: chunk %.16s… is in neither the cache nor the release", artifact.ErrCorrupt, ch.SHA256)
	}
	return s.opt.Fetch(ch)
}

func (s *Stream) sum(b []byte) string {
	s.h.Reset()
	s.h.Write(b)
	return hex.EncodeToString(s.h.Sum(nil))
}

// cached reads chunk i from its cache file, mapped where it can be, and
// checks it.
func (s *Stream) cached(i int, ch Chunk, buf []byte) (b, _ []byte, mapped bool, err error) {
	f, err := os.Open(s.c.path(ch.SHA256))
	if err != nil {
		return nil, buf, false, fmt.Errorf("%w: chunk %d (%.16s…) is not in the cache: %v", artifact.ErrCorrupt, i, ch.SHA256, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() != ch.Size {
		return nil, buf, false, fmt.Errorf("%w: chunk %d (%.16s…) in the cache is not its size", artifact.ErrCorrupt, i, ch.SHA256)
	}
	if mapBlocks {
		b, mapped = mapBlock(f, 0, int(ch.Size))
	}
	if !mapped {
		if cap(buf) < int(ch.Size) {
			buf = s.alloc()
		}
		b = buf[:ch.Size]
		if _, err := f.ReadAt(b, 0); err != nil {
			return nil, buf, false, fmt.Errorf("%w: chunk %d (%.16s…) in the cache: %v", artifact.ErrCorrupt, i, ch.SHA256, err)
		}
	}
	if got := s.sum(b); got != ch.SHA256 {
		if mapped {
			unmapBlock(b)
		}
		return nil, buf, false, fmt.Errorf("%w: chunk %d in the cache has SHA-256 %s; the index says %s", artifact.ErrCorrupt, i, got, ch.SHA256)
	}
	return b, buf, mapped, nil
}

// next makes the next block current; false at the end (s.err set).
func (s *Stream) next() bool {
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

func (s *Stream) Read(p []byte) (int, error) {
	for len(s.cur) == 0 {
		if !s.next() {
			return 0, s.err
		}
	}
	if lz := s.blk.lazy; len(lz) > 0 {
		at := len(s.blk.b) - len(s.cur)
		for len(lz) > 0 && lz[0].at+lz[0].n <= at {
			lz = lz[1:]
		}
		s.blk.lazy = lz
		if len(lz) > 0 {
			if l := lz[0]; l.at <= at {
				n := min(len(p), len(s.cur), l.at+l.n-at)
				if err := s.readLazy(l, p[:n], at-l.at); err != nil {
					s.err, s.cur = err, nil
					return 0, err
				}
				s.cur = s.cur[n:]
				s.pos += int64(n)
				return n, nil
			} else if len(p) > l.at-at {
				p = p[:l.at-at]
			}
		}
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	s.pos += int64(n)
	return n, nil
}

// Seek skips forward (whence io.SeekCurrent, off >= 0 only): the bytes
// are read and checked, not copied out.
func (s *Stream) Seek(off int64, whence int) (int64, error) {
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
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(s.cur) == 0 && !s.next() {
			if s.err == io.EOF {
				return total, nil
			}
			return total, s.err
		}
		if err := s.fillLazy(); err != nil {
			s.err, s.cur = err, nil
			return total, err
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

// release is done with the current block.
func (s *Stream) release() {
	if s.blk.b == nil {
		return
	}
	if s.blk.mapped {
		unmapBlock(s.blk.b)
	} else if s.blk.anon && len(s.blk.b) > bufKeep {
		trimBuf(s.blk.buf[:len(s.blk.b)], bufKeep)
	}
	s.free <- s.blk.buf
	s.blk, s.cur = block{}, nil
}

func (s *Stream) Close() error {
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
	if s.lzFile != nil {
		s.lzFile.Close()
		s.lzFile = nil
	}
	for _, b := range s.bufs {
		freeBuf(b)
	}
	s.bufs = nil
	if s.err == nil {
		s.err = io.ErrClosedPipe
	}
	return nil
}
