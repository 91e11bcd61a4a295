package chunks

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"os"
	"strconv"
)

// Hole is the content of one regular file in a tar: the bytes a skeleton
// leaves out, read back from the release's file instead.
type Hole struct {
	Off  int64 // in the tar
	Size int64
}

// Skeleton writes the tar stream written to it, less the content of its
// regular files, to a file of the cache: the tar's headers, the content
// of its other entries (long names, PAX records), its padding and its
// end. With the record of the files the tar made (Files: which file's
// content lies at which offset) it gives back every byte of the tar from
// the release's files, a few megabytes per gigabyte kept where the chunk
// files took the whole tar. A delta reads from it the chunks the current
// release already holds, each checked against its SHA-256 (Backing).
//
// It never fails the install it observes: a tar it cannot follow, or a
// skeleton over the cache's bound, stops it, logged, and the next
// release fetches the archive.
type Skeleton struct {
	c    *Cache
	tmp  *os.File
	w    *bufio.Writer
	off  bool
	done bool

	pos    int64  // in the tar
	hdr    []byte // the header block being read
	left   int64  // bytes of the current entry's content (and padding) to go
	pad    int64  // of them, padding after the content
	hole   bool   // the content is a regular file's: left out
	pax    []byte // a PAX extended header's content, read to learn the next entry's size
	inPAX  bool
	next   int64 // a size the PAX header gave the next entry; -1: none
	ended  bool  // past the end-of-archive marker: every byte kept
	size   int64 // bytes written to the skeleton
	Holes  []Hole
	budget int64
	h      hash.Hash // of the bytes written
}

const maxPAX = 1 << 20

// Skeleton starts a skeleton in the cache. Commit names it once the
// release it comes from is verified; Close drops it otherwise.
func (c *Cache) Skeleton() *Skeleton {
	s := &Skeleton{c: c, next: -1, budget: c.Max, h: sha256.New()}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		s.stop(err.Error())
		return s
	}
	t, err := os.CreateTemp(c.Dir, ".skel-*")
	if err != nil {
		s.stop(err.Error())
		return s
	}
	s.tmp, s.w = t, bufio.NewWriterSize(t, 64<<10)
	return s
}

// Write follows the tar: headers and whatever is not a regular file's
// content are written to the skeleton.
func (s *Skeleton) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !s.off {
		switch {
		case s.ended:
			s.keep(p)
			p = nil
		case s.left > 0:
			k := min(int64(len(p)), s.left)
			content := s.left - s.pad // content still to come
			if s.hole && content > 0 {
				skip := min(k, content)
				s.pos += skip
				s.left -= skip
				p = p[skip:]
				continue
			}
			if s.inPAX && content > 0 {
				take := min(k, content)
				if len(s.pax)+int(take) > maxPAX {
					s.stop("a PAX header over 1 MiB")
					return n, nil
				}
				s.pax = append(s.pax, p[:take]...)
			}
			s.keep(p[:k])
			s.left -= k
			p = p[k:]
			if s.left == 0 && s.inPAX {
				s.inPAX = false
				if v, ok := paxSize(s.pax); ok {
					s.next = v
				}
				s.pax = s.pax[:0]
			}
		default:
			k := min(512-len(s.hdr), len(p))
			s.hdr = append(s.hdr, p[:k]...)
			p = p[k:]
			if len(s.hdr) == 512 {
				s.header()
			}
		}
	}
	return n, nil
}

// header reads the header block just complete.
func (s *Skeleton) header() {
	h := s.hdr
	s.hdr = s.hdr[:0]
	start := s.pos
	s.keep(h)
	if bytes.Count(h, []byte{0}) == 512 {
		s.ended = true
		return
	}
	size, ok := tarNumber(h[124:136])
	if !ok || size < 0 {
		s.stop(fmt.Sprintf("a tar header at %d that cannot be read", start))
		return
	}
	typ := h[156]
	switch typ {
	case '0', 0, '7':
		if s.next >= 0 {
			size = s.next
		}
		s.next = -1
		s.hole = size > 0
		if s.hole {
			s.Holes = append(s.Holes, Hole{Off: s.pos, Size: size})
		}
	case 'x':
		s.hole, s.inPAX = false, true
	case 'g', 'L', 'K':
		s.hole = false // their content is metadata: kept
	default:
		// Links, directories, anything else: no content the release
		// holds; a size they give is kept as it is.
		s.next = -1
		s.hole = false
	}
	s.pad = (512 - size%512) % 512
	s.left = size + s.pad
}

func (s *Skeleton) keep(p []byte) {
	s.pos += int64(len(p))
	if s.off {
		return
	}
	s.size += int64(len(p))
	if s.size > s.budget {
		s.stop(fmt.Sprintf("the tar's headers take over chunk_cache = %d bytes", s.c.Max))
		return
	}
	s.h.Write(p)
	if _, err := s.w.Write(p); err != nil {
		s.stop(err.Error())
	}
}

// Skip passes over the next n bytes of the tar without them when they
// are all a regular file's content (left out of the skeleton anyway);
// false, nothing done, otherwise: the caller writes them.
func (s *Skeleton) Skip(n int64) bool {
	if s.off || s.ended || !s.hole || len(s.hdr) != 0 || s.left-s.pad < n {
		return s.off
	}
	s.pos += n
	s.left -= n
	return true
}

// SHA256 is the hex SHA-256 of the skeleton's bytes.
func (s *Skeleton) SHA256() string { return hex.EncodeToString(s.h.Sum(nil)) }

// tarNumber reads a numeric field: octal, or base-256 (GNU) when the
// first byte has its high bit set.
func tarNumber(b []byte) (int64, bool) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0]&0x40 != 0 {
			return 0, false // negative
		}
		var v int64
		for i, c := range b {
			if i == 0 {
				c &= 0x7f
			}
			if v > (1<<55)-1 {
				return 0, false
			}
			v = v<<8 | int64(c)
		}
		return v, true
	}
	t := string(bytes.Trim(b, " \x00"))
	if t == "" {
		return 0, true
	}
	v, err := strconv.ParseInt(t, 8, 64)
	return v, err == nil
}

// paxSize reads the size record of a PAX extended header, if it has one.
func paxSize(b []byte) (int64, bool) {
	var v int64 = -1
	for len(b) > 0 {
		sp := bytes.IndexByte(b, ' ')
		if sp <= 0 {
			return -1, false
		}
		n, err := strconv.Atoi(string(b[:sp]))
		if err != nil || n <= sp || n > len(b) {
			return -1, false
		}
		rec := b[sp+1 : n]
		if k, val, ok := bytes.Cut(bytes.TrimSuffix(rec, []byte("\n")), []byte("=")); ok && string(k) == "size" {
			x, err := strconv.ParseInt(string(val), 10, 64)
			if err != nil || x < 0 {
				return -1, false
			}
			v = x
		}
		b = b[n:]
	}
	return v, v >= 0
}

func (s *Skeleton) stop(why string) {
	if !s.off && why != "" && s.c != nil {
		s.c.logger().Warn("stopped keeping the tar's headers for the next delta", "reason", why)
	}
	s.off = true
	if s.tmp != nil {
		s.tmp.Close()
		os.Remove(s.tmp.Name())
		s.tmp = nil
	}
}

// Ok reports whether the skeleton followed the whole tar.
func (s *Skeleton) Ok() bool { return !s.off && s.tmp != nil }

// Size is the bytes of the skeleton.
func (s *Skeleton) Size() int64 { return s.size }

// Commit names the skeleton name in the cache, once the release it was
// cut from is verified; it returns false when there is none (stopped).
func (s *Skeleton) Commit(name string) bool {
	if !s.Ok() || s.left != 0 || len(s.hdr) != 0 {
		s.stop("")
		return false
	}
	t := s.tmp
	s.tmp = nil
	err := s.w.Flush()
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(t.Name(), s.c.path(name))
	}
	if err != nil {
		os.Remove(t.Name())
		s.stop(err.Error())
		return false
	}
	s.done = true
	return true
}

// Close drops what was not committed (a failed install).
func (s *Skeleton) Close() error {
	if !s.done {
		s.stop("")
	}
	return nil
}
