package chunks

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"syscall"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
)

// Backing gives back chunks of the current release's tar from what the
// host already holds: the skeleton of that tar (its headers and padding)
// and the release's files, which hold the rest. It is the cache of a
// delta: nothing of a file's content is kept twice. What it reads is
// only a candidate: the stream checks each chunk against its SHA-256 and
// fetches from the store one that does not match (a file of the release
// the application wrote to, removed or replaced).
type Backing struct {
	old    *Files
	dir    *os.File // the release directory
	skel   *os.File
	at     map[string]int64 // a chunk of the old tar: its offset
	holes  []Hole           // sorted by offset
	before []int64          // bytes of holes before holes[i]
	names  []string         // the file of the release holding holes[i], "" for none
	cur    *os.File         // the file last read, kept open for the next piece
	curOff int64            // its hole's offset
	Read   int64            // bytes read back from the release and its skeleton
	// skelOK: the skeleton's SHA-256 is the one recorded, so its bytes
	// are the current release's tar's; files can then be trusted.
	skelOK bool
	// trust says, per hole, whether the file holding it is trusted by
	// its identity: 0 not yet known, 1 trusted, -1 not.
	trust []int8
}

// lazy is a piece of a chunk that a trusted file of the current release
// holds: left unread until the unpacking reads it (a file linked is
// skipped, never read).
type lazy struct {
	at, n int   // in the chunk
	hole  int   // the hole (file) of the release holding it
	off   int64 // in that file
}

// NewBacking reads the release old describes, in the directory dir, and
// its skeleton in the cache. Close it after.
func (c *Cache) NewBacking(old *Files, dir string) (*Backing, error) {
	if !readBack {
		return nil, errors.New("files of a release are read back on Linux only")
	}
	if old.Skel == "" || len(old.Chunks) == 0 {
		return nil, errors.New("no skeleton recorded for the current release")
	}
	if !slices.IsSortedFunc(old.Holes, func(x, y Hole) int { return cmp.Compare(x.Off, y.Off) }) {
		return nil, errors.New("the record of the current release's holes is out of order")
	}
	skel, err := os.Open(c.path(old.Skel))
	if err != nil {
		return nil, err
	}
	if fi, err := skel.Stat(); err != nil || fi.Size() != old.SkelSize {
		skel.Close()
		return nil, fmt.Errorf("the skeleton of the current release is not the size recorded")
	}
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_DIRECTORY, 0)
	if err != nil {
		skel.Close()
		return nil, err
	}
	b := &Backing{old: old, dir: d, skel: skel, at: map[string]int64{}}
	var off int64
	for _, ch := range old.Chunks {
		if _, ok := b.at[ch.SHA256]; !ok {
			b.at[ch.SHA256] = off
		}
		off += ch.Size
	}
	b.holes = old.Holes // in the tar's order, as the skeleton found them
	b.before = make([]int64, len(b.holes)+1)
	for i, h := range b.holes {
		b.before[i+1] = b.before[i] + h.Size
	}
	b.names = make([]string, len(b.holes))
	for name, f := range old.Files {
		i := sort.Search(len(b.holes), func(i int) bool { return b.holes[i].Off >= f.Off })
		if i < len(b.holes) && b.holes[i] == (Hole{f.Off, f.Size}) {
			b.names[i] = name
		}
	}
	b.trust = make([]int8, len(b.holes))
	if old.SkelSHA256 != "" {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(skel, 0, old.SkelSize)); err == nil && hex.EncodeToString(h.Sum(nil)) == old.SkelSHA256 {
			b.skelOK = true
		}
	}
	return b, nil
}

// trusted reports whether the file holding hole i is trusted by its
// identity: the file found beneath the release directory now is the
// inode the install made, with the size, modification time, mode and
// owner it was given, and the change time it had once made. Writing to
// the file, truncating it, replacing it, or writing through another link
// to it, changes its change time, which no application can set back.
// The file's bytes are then those the install wrote, which were the
// tar's: they are not read or hashed. Known for each file once.
func (b *Backing) trusted(i int) bool {
	if b.trust[i] == 0 {
		b.trust[i] = -1
		if f, err := b.openTrusted(i); err == nil {
			b.trust[i] = 1
			if b.cur != nil {
				b.cur.Close()
			}
			b.cur, b.curOff = f, b.holes[i].Off
		}
	}
	return b.trust[i] == 1
}

// openTrusted opens the file holding hole i when it is trusted (see
// trusted), for reading.
func (b *Backing) openTrusted(i int) (*os.File, error) {
	name := b.names[i]
	if !b.skelOK || name == "" {
		return nil, errors.New("not trusted")
	}
	rec, ok := b.old.Files[name]
	if !ok || rec.Stat.Ctime == 0 || rec.Size != b.holes[i].Size {
		return nil, errors.New("not trusted")
	}
	f, err := openRead(b.dir, name)
	if err != nil {
		return nil, err
	}
	st, err := archive.Stat(f)
	if err != nil || st != rec.Stat {
		f.Close()
		return nil, fmt.Errorf("%w: %s changed since the current release was installed", artifact.ErrCorrupt, name)
	}
	return f, nil
}

// fill reads the lazy piece l into p, for the stream's reading goroutine.
func (b *Backing) fill(l lazy, p []byte) error {
	if b.cur == nil || b.curOff != b.holes[l.hole].Off {
		f, err := b.openTrusted(l.hole)
		if err != nil {
			return err
		}
		if b.cur != nil {
			b.cur.Close()
		}
		b.cur, b.curOff = f, b.holes[l.hole].Off
	}
	if n, err := b.cur.ReadAt(p, l.off); n != len(p) {
		return fmt.Errorf("%w: a file of the current release, read back: %v", artifact.ErrCorrupt, err)
	}
	b.Read += int64(len(p))
	return nil
}

// ReadTrusted gives ch without reading the content of trusted files:
// p gets the skeleton's bytes, and the pieces that trusted files hold
// are returned, unread (but for the last byte of each file, which the
// tar reader reads after skipping a file). false: a piece of ch is in no
// trusted file, nothing done; the chunk is read back and hashed.
func (b *Backing) ReadTrusted(ch Chunk, p []byte) ([]lazy, bool) {
	off, ok := b.at[ch.SHA256]
	if !ok || int64(len(p)) != ch.Size || !b.skelOK {
		return nil, false
	}
	end := off + ch.Size
	var out []lazy
	pos := off
	i := b.hole(off)
	for pos < end {
		if i < len(b.holes) && b.holes[i].Off <= pos {
			if !b.trusted(i) {
				return nil, false
			}
			h := b.holes[i]
			stop := min(end, h.Off+h.Size)
			n := stop - pos
			if stop == h.Off+h.Size && n > 0 {
				// The file's last byte, read now.
				if k, err := b.readFile(i, p[stop-1-off:stop-off], h.Size-1); err != nil || k != 1 {
					return nil, false
				}
				n--
			}
			if n > 0 {
				out = append(out, lazy{at: int(pos - off), n: int(n), hole: i, off: pos - h.Off})
			}
			pos = stop
			if stop == h.Off+h.Size {
				i++
			}
			continue
		}
		stop := end
		if i < len(b.holes) {
			stop = min(stop, b.holes[i].Off)
		}
		n, err := b.skel.ReadAt(p[pos-off:stop-off], pos-b.before[i])
		if n != int(stop-pos) || err != nil && err != io.EOF {
			return nil, false
		}
		b.Read += int64(n)
		pos = stop
	}
	return out, true
}

// Close closes what it holds open.
func (b *Backing) Close() error {
	if b == nil {
		return nil
	}
	if b.cur != nil {
		b.cur.Close()
	}
	b.skel.Close()
	return b.dir.Close()
}

// Has reports whether ch was a chunk of the current release's tar whose
// every byte the skeleton or a recorded file of the release holds.
func (b *Backing) Has(ch Chunk) bool {
	if b == nil {
		return false
	}
	off, ok := b.at[ch.SHA256]
	if !ok {
		return false
	}
	end := off + ch.Size
	for i := b.hole(off); i < len(b.holes) && b.holes[i].Off < end; i++ {
		if b.names[i] == "" {
			return false
		}
	}
	return true
}

// hole is the index of the first hole ending after off.
func (b *Backing) hole(off int64) int {
	return sort.Search(len(b.holes), func(i int) bool { return b.holes[i].Off+b.holes[i].Size > off })
}

// ReadChunk reads ch's bytes, as the current release holds them now,
// into p (len(p) == ch.Size). They are not checked: the caller hashes
// them. A piece that cannot be read (a file removed or replaced) is left
// zero and the first such error returned, the rest read all the same:
// compared with the chunk fetched instead, they tell which bytes of the
// release differ.
func (b *Backing) ReadChunk(ch Chunk, p []byte) error {
	off, ok := b.at[ch.SHA256]
	if !ok || int64(len(p)) != ch.Size {
		return errors.New("not a chunk of the current release")
	}
	pos, end := off, off+ch.Size
	i := b.hole(pos)
	var first error
	for pos < end {
		var n int
		var err error
		if i < len(b.holes) && b.holes[i].Off <= pos {
			h := b.holes[i]
			k := min(end, h.Off+h.Size) - pos
			n, err = b.readFile(i, p[pos-off:pos-off+k], pos-h.Off)
			if err != nil {
				clear(p[pos-off+int64(n) : pos-off+k])
				n = int(k)
			}
			if pos+int64(n) == h.Off+h.Size {
				i++
			}
		} else {
			stop := end
			if i < len(b.holes) {
				stop = min(stop, b.holes[i].Off)
			}
			n, err = b.skel.ReadAt(p[pos-off:stop-off], pos-b.before[i])
			if n == int(stop-pos) {
				err = nil
			} else {
				clear(p[pos-off+int64(n) : stop-off])
				n = int(stop - pos)
			}
		}
		b.Read += int64(n)
		if err != nil && first == nil {
			first = err
		}
		pos += int64(n)
	}
	return first
}

// readFile reads p from offset at of the file whose content is hole i.
func (b *Backing) readFile(i int, p []byte, at int64) (int, error) {
	h := b.holes[i]
	if b.cur == nil || b.curOff != h.Off {
		if b.cur != nil {
			b.cur.Close()
			b.cur = nil
		}
		name := b.names[i]
		if name == "" {
			return 0, errors.New("no file recorded there")
		}
		f, err := openRead(b.dir, name)
		if err != nil {
			return 0, err
		}
		b.cur, b.curOff = f, h.Off
	}
	n, err := b.cur.ReadAt(p, at)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
