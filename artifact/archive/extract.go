package archive

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/dropshipd/dropship/internal/prefetch"
)

// Defaults for the limits of Options.
const (
	DefaultMaxSize  = 8 << 30 // unpacked bytes
	DefaultMaxFiles = 1_000_000
	DefaultMaxRatio = 200 // unpacked bytes per compressed byte
	DefaultMaxDepth = 64  // directories from the release root to an entry
	// maxNameLen and maxComponent are Linux's PATH_MAX and NAME_MAX: a
	// longer name could never be created, so it is refused by name.
	maxNameLen   = 4095
	maxComponent = 255
	// ratioFloor: below this many unpacked bytes the ratio is not judged,
	// so a tiny archive of zeros is not called a bomb.
	ratioFloor = 32 << 20
)

// Options bound and shape one extraction.
type Options struct {
	Name     string // artifact name: format by extension, plain file name
	Format   string // forced format; "" detects
	MaxSize  int64
	MaxFiles int64
	MaxRatio float64
	MaxDepth int
	// AllowSymlinksTo lists absolute directories symlinks may point
	// into, outside the release (["/"]: anywhere). Nothing is ever written
	// through such a link while unpacking.
	AllowSymlinksTo []string
	// FinalDir is where the release will live once promoted: relative
	// links that leave it are judged from there ("" : the unpack dir).
	FinalDir string
	// Aliases are paths that will lead to the release once it is current
	// (the destination symlink): a link coming back in through one is
	// followed through the release's own links.
	Aliases        []string
	PreserveSetuid bool
	FileMode       fs.FileMode // 0: from the archive
	DirMode        fs.FileMode // 0: from the archive
	UID, GID       int         // -1: leave as created
	Spool          string      // directory for the zip spool file
	// Tee, when set, receives the tar stream of a tar archive (after
	// decompression), every byte of it to the end, as it is unpacked: the
	// chunk cache fills itself from it. An error it returns stops the
	// extraction.
	Tee io.Writer
	// Reuse, when set, is asked before each regular file of a tar is
	// written: a file it returns (opened O_PATH, its content and metadata
	// checked to be the entry's) is hard-linked in its place, and the
	// entry's content is skipped (through Seek, when the tar stream can).
	// It is never written through: a later entry of the same name
	// replaces the link.
	Reuse func(e *Entry) *os.File
	// Made, when set, is told of each regular file of a tar made (written
	// or linked), with what the file system says of it once made.
	Made func(e *Entry, st FileStat)
}

func (o *Options) defaults() {
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	if o.MaxRatio <= 0 {
		o.MaxRatio = DefaultMaxRatio
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = DefaultMaxDepth
	}
}

// Stats says what an extraction wrote.
type Stats struct {
	Format  string
	Entries int64
	Bytes   int64 // unpacked file content
}

// ErrRefused marks an archive refused as unsafe or over a limit.
var ErrRefused = errors.New("archive refused")

// EntryError names the entry that was refused and why.
type EntryError struct {
	Entry  string
	Reason string
}

func (e *EntryError) Error() string {
	name := e.Entry
	if len(name) > 160 {
		// A hostile name may be kilobytes long: enough of it to find it.
		name = name[:80] + "…" + name[len(name)-40:]
	}
	return fmt.Sprintf("archive refused: entry %q: %s", name, e.Reason)
}
func (e *EntryError) Unwrap() error { return ErrRefused }

// refuseFS refuses an entry the file system would not make, unless the
// file system failed for reasons of the host's own (no room, no inode, a
// quota, an I/O error, a read-only mount, no descriptor left): those are
// not the archive's fault and are no refusal.
func refuseFS(name string, err error) error {
	if hostFS(err) {
		return fmt.Errorf("make %q: %w", name, err)
	}
	return refuse(name, "%v", err)
}

// hostFS says whether err is the host's file system's own failure.
func hostFS(err error) bool {
	for _, e := range []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EIO, syscall.EROFS, syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func refuse(name, format string, args ...any) error {
	return &EntryError{Entry: name, Reason: fmt.Sprintf(format, args...)}
}

type writerOnly struct{ io.Writer }

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// Extract unpacks src into dir, which must exist and be empty. On error,
// dir holds a partial result that the caller removes; nothing is ever
// written outside dir.
func Extract(ctx context.Context, src io.Reader, dir string, opt Options) (Stats, error) {
	opt.defaults()
	in := src
	counted := &countReader{r: src}
	br := bufio.NewReaderSize(counted, 16<<10)
	format := opt.Format
	if format == "" {
		format = Detect(br, opt.Name)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Stats{}, err
	}
	defer root.Close()
	if opt.FinalDir == "" {
		opt.FinalDir, _ = filepath.Abs(dir)
	}
	aliases := make([]string, len(opt.Aliases))
	for i, a := range opt.Aliases {
		aliases[i] = path.Clean(a)
	}
	opt.Aliases = aliases
	x := &extractor{ctx: ctx, root: root, opt: opt, compressed: counted, links: map[string]bool{}, made: map[string]bool{}, onDisk: map[string]bool{}}
	defer x.closeDirRoots()
	x.dirCap = dirBound()
	x.stats.Format = format

	switch format {
	case Plain:
		err = x.plain(br)
	case Zip:
		err = x.zip(br)
	default:
		var r io.Reader
		r, err = decompressor(format, br)
		if err == nil {
			src := r
			if format != Tar {
				// Decompression in a goroutine of its own, a few chunks
				// ahead of the unpacking: on two cores they overlap.
				// Chunks of 256 KiB, not 64: a 1 GiB tar is 4,096
				// hand-offs between the goroutines, not 16,384, each a
				// wake-up of a parked one at worst (futex calls and the
				// scheduler's spinning: 5-7 % of the install's CPU), for
				// 1.1 MiB more of buffers.
				src = prefetch.New(r, 256<<10, 4)
			}
			var tr io.Reader = src
			if opt.Tee != nil {
				tr = io.TeeReader(src, opt.Tee)
			}
			if rs, ok := in.(io.ReadSeeker); ok && opt.Format == Tar && opt.Tee == nil && opt.Reuse != nil {
				// The tar reader reads the stream itself (it buffers),
				// and skips reused files' content by Seek.
				s := &seekSource{rs: rs, c: counted}
				tr, x.pos = s, func() int64 { return s.n }
			} else if opt.Reuse != nil || opt.Made != nil {
				p := &posReader{r: tr}
				tr, x.pos = p, func() int64 { return p.n }
			}
			err = x.tar(tar.NewReader(tr))
			if err == nil && opt.Tee != nil {
				// The tar reader stops at the end-of-archive marker: the
				// tee gets the padding after it too.
				_, err = io.Copy(io.Discard, tr)
			}
			if src != r {
				src.(io.Closer).Close() // before the decompressor: it reads from it
			}
			if c, ok := r.(io.Closer); ok {
				c.Close()
			}
		}
	}
	if err == nil {
		err = x.finish()
	}
	if err != nil {
		x.dropLinks()
	}
	return x.stats, err
}

// dropLinks removes the symlinks an unpacking that failed has made: they
// are judged as the kernel resolves them only once the archive is all
// unpacked (finish), so a refused or truncated one may have left a link
// leading out of the release (d/s to ".", then d/up to "s/../../"). The
// caller discards the directory; until it does, no link of it leads out.
func (x *extractor) dropLinks() {
	for link := range x.links {
		x.root.Remove(link)
	}
}

// TarStream returns the tar stream inside a tar archive of any format
// Extract knows (detected as Extract does, name helping), and the format.
// Zip and plain files have none: an error wrapping ErrRefused.
func TarStream(r io.Reader, name string) (io.Reader, string, error) {
	br := bufio.NewReaderSize(r, 16<<10)
	format := Detect(br, name)
	if format == Zip || format == Plain {
		return nil, format, fmt.Errorf("%w: a %s is not a tar archive", ErrRefused, format)
	}
	tr, err := decompressor(format, br)
	return tr, format, err
}

func decompressor(format string, r io.Reader) (io.Reader, error) {
	switch format {
	case Tar:
		return r, nil
	case TarGz:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%w: not a valid gzip stream: %v", ErrRefused, err)
		}
		return zr, nil
	case TarZst:
		// Low memory and one goroutine: constant memory whatever the size.
		zr, err := zstd.NewReader(r, zstd.WithDecoderLowmem(true), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, fmt.Errorf("%w: not a valid zstd stream: %v", ErrRefused, err)
		}
		return zstdCloser{zr}, nil
	case TarXz:
		if br, ok := r.(*bufio.Reader); ok {
			if err := xzDictBounded(br); err != nil {
				return nil, err
			}
		}
		zr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%w: not a valid xz stream: %v", ErrRefused, err)
		}
		return zr, nil
	case TarBz2:
		return bzip2.NewReader(r), nil
	}
	return nil, fmt.Errorf("unknown archive format %q", format)
}

// maxXZDict bounds the LZMA2 dictionary an xz stream may ask for: the
// decoder allocates it whole, so a 2 KiB stream declaring 1.5 GiB would
// take 1.5 GiB of memory. xz -9 uses 64 MiB.
const maxXZDict = 64 << 20

// xzDictBounded reads the first block header of the xz stream behind br
// (peeked, not consumed) and refuses a dictionary over maxXZDict.
func xzDictBounded(br *bufio.Reader) error {
	head, _ := br.Peek(12 + 1024)
	if len(head) < 14 || head[12] == 0 { // no block: the index follows
		return nil
	}
	hdr := head[12:]
	size := (int(hdr[0]) + 1) * 4
	if len(hdr) < size {
		return nil // the decoder reports the truncation
	}
	hdr = hdr[:size-4] // without its CRC32
	flags, i := hdr[1], 2
	varint := func() (uint64, bool) {
		var v uint64
		for shift := 0; i < len(hdr) && shift < 63; shift += 7 {
			b := hdr[i]
			i++
			v |= uint64(b&0x7f) << shift
			if b&0x80 == 0 {
				return v, true
			}
		}
		return 0, false
	}
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} {
		if present {
			if _, ok := varint(); !ok {
				return nil
			}
		}
	}
	for range int(flags&3) + 1 {
		id, ok1 := varint()
		n, ok2 := varint()
		if !ok1 || !ok2 || uint64(len(hdr)-i) < n {
			return nil
		}
		if id == 0x21 && n == 1 { // LZMA2: one byte encodes the dictionary size
			p := hdr[i]
			dict := uint64(1)<<32 - 1
			if p < 40 {
				dict = uint64(2|p&1) << (p/2 + 11)
			}
			if dict > maxXZDict {
				return fmt.Errorf("%w: xz stream asks for a %d MiB dictionary, over %d MiB (xz -9 uses 64 MiB)", ErrRefused, dict>>20, maxXZDict>>20)
			}
		}
		i += int(n)
	}
	return nil
}

type zstdCloser struct{ *zstd.Decoder }

func (z zstdCloser) Close() error { z.Decoder.Close(); return nil }

type countReader struct {
	r io.Reader
	n atomic.Int64 // read by the unpacking goroutine, written by the decompressing one
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type dirMeta struct {
	name  string
	mode  fs.FileMode
	mtime time.Time
}

type extractor struct {
	ctx        context.Context
	root       *os.Root
	opt        Options
	compressed *countReader
	stats      Stats
	links      map[string]bool // symlinks written so far
	dirs       []dirMeta       // modes and times applied last
	// made holds every directory known to exist, explicit or made for an
	// entry's parents: each counts once toward max_files.
	made map[string]bool
	// onDisk holds the directories made on disk for entries' parents.
	onDisk map[string]bool
	// dirRoots are directories of the release kept open to create files
	// in (create).
	dirRoots map[string]*os.Root
	// dirFiles are directories of the release kept open to link files
	// into (Reuse).
	dirFiles map[string]*os.File
	// dirCap bounds dirFiles below maxDirFiles where the process may open
	// few descriptors (dirBound), and once it ran out of them (shed).
	dirCap int
	// pos is the position in the tar stream, when Reuse or Made needs it.
	pos func() int64
	// entry is the tar entry file is writing, when Made wants it.
	entry *Entry
}

// clean validates an entry name and returns it relative to the root.
func clean(name string) (string, error) {
	n := strings.ReplaceAll(name, "\\", "/")
	if n == "" || strings.ContainsRune(n, 0) {
		return "", refuse(name, "empty or NUL in name")
	}
	if strings.HasPrefix(n, "/") || filepath.IsAbs(n) || (len(n) > 1 && n[1] == ':') {
		return "", refuse(name, "absolute name")
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", refuse(name, "name contains \"..\"")
		}
	}
	c := path.Clean(n)
	if c == "." {
		return ".", nil
	}
	return c, nil
}

// viaLink refuses names that pass through a symlink of this archive: a
// later file must never be written through an earlier link.
func (x *extractor) viaLink(orig, name string) error {
	for p := path.Dir(name); p != "." && p != "/"; p = path.Dir(p) {
		if x.links[p] {
			return refuse(orig, "written through the symlink %q", p)
		}
	}
	return nil
}

func (x *extractor) count(name string) error {
	if err := x.ctx.Err(); err != nil {
		return err
	}
	x.stats.Entries++
	if x.stats.Entries > x.opt.MaxFiles {
		return refuse(name, "more than max_files = %d entries", x.opt.MaxFiles)
	}
	return nil
}

// prepare makes the parents of name and clears a previous entry of the
// same name, refusing anything but a file replacing a file.
func (x *extractor) prepare(orig, name string, isDir bool) error {
	if err := x.parentsOf(orig, name); err != nil {
		return err
	}
	return x.clear(orig, name, isDir)
}

// parentsOf checks where name would be written and makes its parents.
func (x *extractor) parentsOf(orig, name string) error {
	if err := x.viaLink(orig, name); err != nil {
		return err
	}
	if err := x.shape(orig, name); err != nil {
		return err
	}
	if dir := path.Dir(name); dir != "." && !x.onDisk[dir] {
		if err := x.parents(orig, dir); err != nil {
			return err
		}
		err := x.root.MkdirAll(dir, 0o755)
		if tooFewFDs(err) && x.shed("") {
			err = x.root.MkdirAll(dir, 0o755)
		}
		if err != nil {
			if hostFS(err) {
				return fmt.Errorf("make the directory of %q: %w", orig, err)
			}
			return refuse(orig, "cannot create its directory: %v", err)
		}
		// Made here, and never replaced (a directory is never replaced
		// by anything else): the next entry in it needs no MkdirAll.
		for p := dir; p != "." && p != "/"; p = path.Dir(p) {
			x.onDisk[p] = true
		}
	}
	return nil
}

// clear removes a previous file of the same name, refusing anything but
// a file replacing a file (or a directory entry for a directory).
func (x *extractor) clear(orig, name string, isDir bool) error {
	fi, err := x.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return refuseFS(orig, err)
	}
	switch {
	case fi.IsDir() && isDir:
		return nil
	case fi.IsDir():
		return refuse(orig, "replaces a directory of the same name")
	case fi.Mode()&fs.ModeSymlink != 0:
		return refuse(orig, "replaces a symlink of the same name")
	case isDir:
		return refuse(orig, "directory replaces a file of the same name")
	}
	return x.root.Remove(name)
}

// shape refuses names deeper than max_depth or longer than the system
// allows, before anything is created for them.
func (x *extractor) shape(orig, name string) error {
	if len(name) > maxNameLen {
		return refuse(orig, "name of %d bytes, over the system's %d", len(name), maxNameLen)
	}
	depth := strings.Count(name, "/") + 1
	if depth > x.opt.MaxDepth {
		return refuse(orig, "%d levels deep, over max_depth = %d (set on the artifact block)", depth, x.opt.MaxDepth)
	}
	for _, c := range strings.Split(name, "/") {
		if len(c) > maxComponent {
			return refuse(orig, "a name component of %d bytes, over the system's %d", len(c), maxComponent)
		}
	}
	return nil
}

// parents counts the directories an entry needs that do not exist yet:
// made implicitly, they are entries all the same (max_files).
func (x *extractor) parents(orig, dir string) error {
	var missing []string
	for p := dir; p != "." && p != "/" && !x.made[p]; p = path.Dir(p) {
		missing = append(missing, p)
	}
	for _, p := range missing {
		x.made[p] = true
		x.stats.Entries++
		if x.stats.Entries > x.opt.MaxFiles {
			return refuse(orig, "more than max_files = %d entries (counting the directories it needs)", x.opt.MaxFiles)
		}
	}
	return nil
}

func (x *extractor) mode(m fs.FileMode, isDir bool) fs.FileMode {
	if isDir && x.opt.DirMode != 0 {
		return x.opt.DirMode
	}
	if !isDir && x.opt.FileMode != 0 {
		return x.opt.FileMode
	}
	keep := fs.ModePerm | fs.ModeSticky
	if x.opt.PreserveSetuid {
		keep |= fs.ModeSetuid | fs.ModeSetgid
	}
	return m & keep
}

func (x *extractor) dir(orig, name string, m fs.FileMode, mtime time.Time) error {
	if name == "." {
		return nil
	}
	if err := x.prepare(orig, name, true); err != nil {
		return err
	}
	if err := x.root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return refuseFS(orig, err)
	}
	x.made[name] = true
	x.dirs = append(x.dirs, dirMeta{name, x.mode(m, true), mtime})
	return nil
}

// file writes one regular file. declared is the size the archive states
// for it (-1 when unknown): it counts against max_size before a byte is
// written, and the compression ratio is judged while writing, so a bomb
// is refused with little of it on disk.
func (x *extractor) file(orig, name string, r io.Reader, m fs.FileMode, mtime time.Time, declared int64) error {
	if name == "." {
		return refuse(orig, "a file cannot be the release directory itself")
	}
	if declared > x.opt.MaxSize-x.stats.Bytes {
		return refuse(orig, "declares %d bytes: unpacked size over max_size = %d bytes", declared, x.opt.MaxSize)
	}
	if err := x.parentsOf(orig, name); err != nil {
		return err
	}
	// Most names are new: create first (O_EXCL follows no link and
	// replaces nothing), and look at what is there only when it fails.
	f, err := x.create(name)
	if errors.Is(err, fs.ErrExist) {
		if err := x.clear(orig, name, false); err != nil {
			return err
		}
		f, err = x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return refuseFS(orig, err)
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	limit := x.opt.MaxSize - x.stats.Bytes
	// writerOnly hides (*os.File).ReadFrom, whose fallback would allocate
	// a fresh buffer for every file instead of using the pooled one.
	before := x.stats.Bytes
	n, err := io.CopyBuffer(writerOnly{&ratioWriter{w: f, x: x, orig: orig}}, io.LimitReader(r, limit+1), *bp)
	x.stats.Bytes = before + n
	if err == nil && n > limit {
		err = refuse(orig, "unpacked size over max_size = %d bytes", x.opt.MaxSize)
	}
	if err == nil {
		err = x.ratio(orig)
	}
	// chown first: it clears setuid and setgid bits, which the chmod then
	// sets when preserve_setuid asks for them.
	if err == nil && (x.opt.UID >= 0 || x.opt.GID >= 0) {
		err = f.Chown(x.opt.UID, x.opt.GID)
	}
	if err == nil {
		err = f.Chmod(x.mode(m, false))
	}
	timed := err == nil && !mtime.IsZero() && setTimes(f, mtime)
	if err == nil && x.entry != nil && (timed || mtime.IsZero()) {
		if st, serr := Stat(f); serr == nil {
			x.opt.Made(x.entry, st)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var ee *EntryError
		if errors.As(err, &ee) {
			return err
		}
		return fmt.Errorf("write %q: %w", orig, err)
	}
	if !mtime.IsZero() && !timed {
		x.root.Chtimes(name, mtime, mtime)
	}
	return nil
}

// maxDirRoots bounds the directories kept open for creating files.
const maxDirRoots = 64

// create makes a new file through a root opened on its directory and
// kept: one openat per file instead of a walk from the release root (an
// open and a close per component). A directory path, once made, stays
// that directory: nothing replaces a directory, and no entry is written
// through a link.
func (x *extractor) create(name string) (*os.File, error) {
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	in := dir
	if in == "" {
		in = "."
	}
	if f, ok, err := x.createAt(in, base); ok {
		return f, err
	}
	if dir == "" {
		return x.root.OpenFile(name, flags, 0o600)
	}
	r, ok := x.dirRoots[dir]
	if !ok {
		if len(x.dirRoots) >= maxDirRoots {
			x.closeDirRoots()
		}
		var err error
		if r, err = x.root.OpenRoot(dir); err != nil {
			return nil, err
		}
		if x.dirRoots == nil {
			x.dirRoots = map[string]*os.Root{}
		}
		x.dirRoots[dir] = r
	}
	return r.OpenFile(base, flags, 0o600)
}

func (x *extractor) closeDirRoots() {
	for d, r := range x.dirRoots {
		r.Close()
		delete(x.dirRoots, d)
	}
	for d, f := range x.dirFiles {
		f.Close()
		delete(x.dirFiles, d)
	}
}

// ratio refuses an archive that has unpacked to over max_ratio times the
// compressed bytes read (past a floor, so small archives of zeros pass).
func (x *extractor) ratio(orig string) error {
	if x.stats.Bytes > ratioFloor && float64(x.stats.Bytes) > x.opt.MaxRatio*float64(x.compressed.n.Load()) {
		return refuse(orig, "compression ratio over %g:1 (a decompression bomb? max_ratio on the artifact block raises it)", x.opt.MaxRatio)
	}
	return nil
}

// ratioWriter counts what a file has written so far into the stats and
// judges the ratio as it goes.
type ratioWriter struct {
	w    io.Writer
	x    *extractor
	orig string
}

func (r *ratioWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	r.x.stats.Bytes += int64(n)
	if err == nil {
		err = r.x.ratio(r.orig)
	}
	return n, err
}

// outside refuses a link whose target leaves the release, naming the
// key that would allow it, unless abs lies under an allowed directory.
func (x *extractor) outside(orig, target, abs string) error {
	abs = path.Clean(abs)
	for _, p := range x.opt.AllowSymlinksTo {
		p = path.Clean(p)
		if p == "/" || abs == p || strings.HasPrefix(abs, p+"/") {
			return nil
		}
	}
	if len(x.opt.AllowSymlinksTo) == 0 {
		return refuse(orig, "symlink to %q points outside the release, to %s (allow it with allow_symlinks_to = [\"%s\"])", target, abs, path.Dir(abs))
	}
	return refuse(orig, "symlink to %q points outside the release, to %s, which allow_symlinks_to does not list", target, abs)
}

func (x *extractor) symlink(orig, name, target string) error {
	switch {
	case target == "" || strings.ContainsRune(target, 0) || filepath.IsAbs(target) && !path.IsAbs(target):
		return refuse(orig, "symlink to %q: not a usable target", target)
	case path.IsAbs(target):
		if err := x.outside(orig, target, target); err != nil {
			return err
		}
	default:
		if j := path.Join(path.Dir(name), target); j == ".." || strings.HasPrefix(j, "../") {
			if err := x.outside(orig, target, path.Join(x.opt.FinalDir, path.Dir(name), target)); err != nil {
				return err
			}
		}
	}
	if err := x.prepare(orig, name, false); err != nil {
		return err
	}
	if err := x.root.Symlink(target, name); err != nil {
		return refuseFS(orig, err)
	}
	x.links[name] = true
	if x.opt.UID >= 0 || x.opt.GID >= 0 {
		if err := x.root.Lchown(name, x.opt.UID, x.opt.GID); err != nil {
			return fmt.Errorf("chown %q: %w", orig, err)
		}
	}
	return nil
}

func (x *extractor) hardlink(orig, name, target string) error {
	t, err := clean(target)
	if err != nil || t == "." {
		return refuse(orig, "hard link to %q points outside the release", target)
	}
	if err := x.viaLink(orig, t); err != nil {
		return err
	}
	fi, err := x.root.Lstat(t)
	if err != nil {
		return refuse(orig, "hard link to %q, which is not an earlier file of the archive", target)
	}
	if !fi.Mode().IsRegular() {
		return refuse(orig, "hard link to %q, which is not a regular file", target)
	}
	if err := x.prepare(orig, name, false); err != nil {
		return err
	}
	if err := x.root.Link(t, name); err != nil {
		return refuseFS(orig, err)
	}
	return nil
}

func (x *extractor) tar(tr *tar.Reader) error {
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: reading tar: %v", ErrRefused, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if err := x.count(hdr.Name); err != nil {
			return err
		}
		name, err := clean(hdr.Name)
		if err != nil {
			return err
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		if hdr.Mode&04000 != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&02000 != 0 {
			mode |= fs.ModeSetgid
		}
		if hdr.Mode&01000 != 0 {
			mode |= fs.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = x.dir(hdr.Name, name, mode, hdr.ModTime)
		case tar.TypeGNUSparse:
			err = refuse(hdr.Name, "sparse file (refused: a release needs none; make the archive without --sparse)")
		case tar.TypeReg, tar.TypeRegA:
			if sparsePAX(hdr) {
				err = refuse(hdr.Name, "sparse file (refused: a release needs none; make the archive without --sparse)")
				break
			}
			if x.pos == nil {
				err = x.file(hdr.Name, name, tr, mode, hdr.ModTime, hdr.Size)
				break
			}
			e := &Entry{Name: name, Header: hdr, Offset: x.pos(), Mode: x.mode(mode, false)}
			err = x.tarFile(hdr.Name, e, tr, mode)
		case tar.TypeSymlink:
			err = x.symlink(hdr.Name, name, hdr.Linkname)
		case tar.TypeLink:
			err = x.hardlink(hdr.Name, name, hdr.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			err = refuse(hdr.Name, "device node")
		case tar.TypeFifo:
			err = refuse(hdr.Name, "FIFO")
		default:
			err = refuse(hdr.Name, "unsupported entry type %q", string(hdr.Typeflag))
		}
		if err != nil {
			return err
		}
	}
}

// tarFile makes a regular file of a tar when Reuse or Made is set: linked
// from what Reuse offers, else written.
func (x *extractor) tarFile(orig string, e *Entry, tr io.Reader, mode fs.FileMode) error {
	if x.opt.Reuse != nil {
		if src := x.opt.Reuse(e); src != nil {
			ok, err := x.reuse(orig, e.Name, src, e.Header.Size)
			if ok && x.opt.Made != nil {
				if st, serr := Stat(src); serr == nil {
					x.opt.Made(e, st)
				}
			}
			src.Close()
			if ok || err != nil {
				return err
			}
		}
	}
	if x.opt.Made != nil {
		x.entry = e
		defer func() { x.entry = nil }()
	}
	return x.file(orig, e.Name, tr, mode, e.Header.ModTime, e.Header.Size)
}

// sparsePAX tells a PAX sparse entry (GNU tar's formats 0.x and 1.0),
// which the reader would otherwise expand hole and all.
func sparsePAX(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// zip needs random access: the stream is spooled to a file first.
func (x *extractor) zip(r io.Reader) error {
	f, err := os.CreateTemp(x.opt.Spool, ".zip-spool-*")
	if err != nil {
		return fmt.Errorf("spool zip: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	bp := bufPool.Get().(*[]byte)
	size, err := io.CopyBuffer(writerOnly{f}, r, *bp)
	bufPool.Put(bp)
	if err != nil {
		return fmt.Errorf("spool zip: %w", err)
	}
	zr, err := zip.NewReader(f, size)
	if err != nil {
		return fmt.Errorf("%w: not a valid zip archive: %v", ErrRefused, err)
	}
	x.compressed.n.Store(size)
	for _, e := range zr.File {
		if err := x.count(e.Name); err != nil {
			return err
		}
		name, err := clean(e.Name)
		if err != nil {
			return err
		}
		m := e.Mode()
		switch {
		case m.IsDir():
			err = x.dir(e.Name, name, m, e.Modified)
		case m&fs.ModeSymlink != 0:
			var target []byte
			target, err = readSmall(e)
			if err == nil {
				err = x.symlink(e.Name, name, string(target))
			}
		case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
			err = refuse(e.Name, "device node")
		case m&fs.ModeNamedPipe != 0:
			err = refuse(e.Name, "FIFO")
		case m&(fs.ModeSocket|fs.ModeIrregular) != 0:
			err = refuse(e.Name, "unsupported entry type")
		default:
			var rc io.ReadCloser
			rc, err = e.Open()
			if err == nil {
				err = x.file(e.Name, name, rc, m, e.Modified, int64(min(e.UncompressedSize64, 1<<62)))
				rc.Close()
			}
		}
		if err != nil {
			var ee *EntryError
			if errors.As(err, &ee) {
				return err
			}
			return fmt.Errorf("%w: entry %q: %v", ErrRefused, e.Name, err)
		}
	}
	return nil
}

func readSmall(e *zip.File) ([]byte, error) {
	rc, err := e.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 4097))
	if len(b) > 4096 {
		return nil, refuse(e.Name, "symlink target too long")
	}
	return b, err
}

func (x *extractor) plain(r io.Reader) error {
	name := path.Base(strings.ReplaceAll(x.opt.Name, "\\", "/"))
	if name == "" || name == "." || name == "/" || name == ".." {
		name = "artifact"
	}
	if err := x.count(name); err != nil {
		return err
	}
	return x.file(name, name, r, 0o644, time.Time{}, -1)
}

// finish applies directory modes (last, so a read-only directory does not
// stop its own files being written) and checks that every symlink, as
// the system will resolve it, stays inside the release.
func (x *extractor) finish() error {
	for link := range x.links {
		if err := x.resolveInside(link); err != nil {
			return err
		}
	}
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if err := x.root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("chmod %q: %w", d.name, err)
		}
		if x.opt.UID >= 0 || x.opt.GID >= 0 {
			if err := x.root.Lchown(d.name, x.opt.UID, x.opt.GID); err != nil {
				return fmt.Errorf("chown %q: %w", d.name, err)
			}
		}
		if !d.mtime.IsZero() {
			x.root.Chtimes(d.name, d.mtime, d.mtime)
		}
	}
	if x.opt.DirMode == 0 && x.opt.UID < 0 && x.opt.GID < 0 {
		return nil
	}
	// Directories the archive did not list were made 0755; honour the
	// configured mode and owner for them too.
	return fs.WalkDir(x.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || p == "." {
			return err
		}
		if x.opt.DirMode != 0 {
			if err := x.root.Chmod(p, x.opt.DirMode); err != nil {
				return err
			}
		}
		if x.opt.UID >= 0 || x.opt.GID >= 0 {
			return x.root.Lchown(p, x.opt.UID, x.opt.GID)
		}
		return nil
	})
}

// resolveInside follows link the way the kernel would, component by
// component, and refuses it if it lands outside the release anywhere
// allow_symlinks_to does not list. Outside the release the host's own
// directories are taken as named, but a path that comes back in (through
// the release's final place or an alias of it, the destination) goes on
// through the release's own links, and one that enters another release
// is refused: their links are not judged here.
func (x *extractor) resolveInside(link string) error {
	final := path.Clean(x.opt.FinalDir)
	releases := path.Dir(final)
	var stack []string // resolved components, relative to the root
	host := ""         // where the walk is on the host, once out of the release
	pending := strings.Split(link, "/")
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		if c == "" || c == "." {
			continue
		}
		if host != "" {
			if c == ".." {
				host = path.Dir(host)
			} else {
				host = path.Join(host, c)
			}
			switch {
			case host == final || slices.Contains(x.opt.Aliases, host):
				host, stack = "", stack[:0]
			case host != releases && path.Dir(host) == releases:
				target, _ := x.root.Readlink(link)
				return refuse(link, "symlink to %q leads into another release, %s", target, host)
			}
			continue
		}
		if c == ".." {
			if len(stack) == 0 {
				host = releases // above the release, from its final place
				continue
			}
			stack = stack[:len(stack)-1]
			continue
		}
		cur := path.Join(append(stack, c)...)
		fi, err := x.root.Lstat(cur)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			stack = append(stack, c)
			continue
		}
		if hops++; hops > 40 {
			return refuse(link, "too many levels of symlinks")
		}
		target, err := x.root.Readlink(cur)
		if err != nil {
			return refuse(link, "%v", err)
		}
		if path.IsAbs(target) {
			host = "/"
		}
		pending = append(strings.Split(target, "/"), pending...)
	}
	if host == "" {
		return nil
	}
	target, _ := x.root.Readlink(link)
	return x.outside(link, target, host)
}
