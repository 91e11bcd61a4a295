package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"aead.dev/minisign"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/internal/trim"
)

// DefaultChunkCache is the chunk_cache of an artifact block that sets
// none: room for the skeletons of releases far larger, and for a delta
// that fetches up to 2 GiB of chunks.
const DefaultChunkCache = 2 << 30

// deltaWorth: a delta is tried when the chunks to fetch take less than
// this share of the archive; a colder cache fetches the archive (and
// keeps the skeleton of its tar).
const deltaWorth = 0.5

// delta is the chunked path of one fetch: the index of the version being
// installed and the service's chunk cache. nil: the archive alone.
type delta struct {
	t     *txn
	idx   *chunks.Index
	cache *chunks.Cache
	// skel keeps the headers of the tar this install unpacks: with the
	// release's files, the next delta's source of unchanged chunks.
	skel *chunks.Skeleton
	// files records the files this install makes, for the next delta.
	files *chunks.Files
	// claims are the index's signature's, checked when keys are trusted.
	claims *signature.Claims
	// linked and linkedBytes: the files of the current release a delta
	// linked instead of writing.
	linked      int
	linkedBytes int64
	// cur is the record of the current release's files, read once.
	cur     *chunks.Files
	curRead bool
	// trusted: chunks of the current release not read, every file
	// holding them trusted by its identity.
	trusted int
}

// chunked loads the chunk index of the version pinned, when the service
// keeps a chunk cache and the store holds an index made from exactly this
// version (signed, when the service trusts keys). Anything missing or
// wrong means the archive is fetched, as without an index.
func (t *txn) chunked(ctx context.Context) *delta {
	if t.r.svc.ChunkCache <= 0 {
		return nil
	}
	d := &delta{t: t, cache: &chunks.Cache{Dir: filepath.Join(t.r.lay.dir, "chunks"), Max: t.r.svc.ChunkCache, Logger: t.logger}}
	var verify chunks.Verify
	if t.r.svc.Keys.Len() > 0 {
		verify = d.verify
	}
	idx, err := chunks.Load(ctx, t.r.svc.Source, t.info, verify)
	if err != nil {
		if !errors.Is(err, chunks.ErrNoIndex) || errors.Is(err, signature.ErrRefused) || errors.Is(err, artifact.ErrCorrupt) ||
			errors.Is(err, chunks.ErrIndexTooLarge) {
			t.logger.Warn("chunk index not used; fetching the archive", "error", err)
		} else {
			t.logger.Debug("no chunk index; fetching the archive", "reason", err)
		}
		return nil
	}
	if p := t.pending; p != nil && (p.Claims.SHA256 != "" && p.Claims.SHA256 != idx.Archive.SHA256 ||
		p.Claims.Size > 0 && p.Claims.Size != idx.Archive.Size) {
		// The archive's signature and the index's vouch for different
		// archives: the archive, whose bytes are checked against its
		// signature, decides.
		t.logger.Warn("chunk index not used; fetching the archive", "error",
			fmt.Errorf("the index was made from sha256 %.12s…, the archive's signature vouches for %.12s…", idx.Archive.SHA256, p.Claims.SHA256))
		return nil
	}
	d.idx = idx
	return d
}

// verify checks the index's signature as openSignature checks the
// archive's: a trusted key, this service, no replay, not from the future.
func (d *delta) verify(_ context.Context, sig, index []byte) error {
	t := d.t
	r := minisign.NewReader(bytes.NewReader(index))
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	sum := sha256.Sum256(index)
	now := t.r.now()
	if t.info.Modified.After(now) {
		now = t.info.Modified
	}
	// Replays are judged from the newest release ever installed here, as
	// for the archive's signature (which openSignature checked already).
	want := signature.Expect{Service: t.r.svc.Name, SHA256: hex.EncodeToString(sum[:]), Now: now}
	if n := t.st.NewestSigned; n != nil {
		want.After = n.Time
	}
	c, err := t.r.svc.Keys.Verify(sig, r, want)
	if err != nil {
		return err
	}
	d.claims = &c
	return nil
}

// install tries the delta: fetch the chunks that neither the current
// release nor the cache holds, then unpack the tar reassembled from them
// into staging. It reports whether the release is unpacked; false with no
// error means the archive is to be fetched (cold cache, a chunk missing
// or refused: nothing of it is kept).
func (d *delta) install(ctx context.Context) (bool, error) {
	if d == nil {
		return false, nil
	}
	t := d.t
	// The tar is the index's word until its last byte: what it makes is
	// bounded as an archive's unpacking is, before a chunk is written.
	opt := t.unpackOptions()
	maxSize, maxRatio := opt.MaxSize, opt.MaxRatio
	if maxSize <= 0 {
		maxSize = archive.DefaultMaxSize
	}
	if maxRatio <= 0 {
		maxRatio = archive.DefaultMaxRatio
	}
	if tar := d.idx.Tar.Size; tar > maxSize || float64(tar) > maxRatio*float64(d.idx.Archive.Size) {
		t.logger.Warn("chunk index not used; fetching the archive", "error",
			fmt.Errorf("its tar of %d bytes, from a %d-byte archive, is over max_size = %d or max_ratio = %g", tar, d.idx.Archive.Size, maxSize, maxRatio))
		return false, nil
	}
	// The code and heap the start and the index's GET left go back to the
	// system before the current release's record is read: its 13,193
	// files would otherwise come on top of them (the code that is needed
	// again comes back from the page cache). Without a record (a first
	// install: the archive follows) there is nothing to make room for,
	// and the code dropped would only be faulted back in.
	if d.hasRecord() {
		trim.Heap()
		trim.Text()
	}
	backing := d.backing()
	defer func() { backing.Close() }()
	missing, stored := d.cache.Missing(d.idx, backing)
	var need int64
	for _, ch := range missing {
		need += ch.Size
	}
	if float64(stored) > deltaWorth*float64(d.idx.Archive.Size) || need > d.cache.Max {
		t.logger.Info("chunk cache too cold for a delta; fetching the archive", "missing_chunks", len(missing),
			"missing_bytes", stored, "archive_bytes", d.idx.Archive.Size, "chunk_cache", d.cache.Max)
		return false, nil
	}
	// What reading the records left behind goes back to the system before
	// the chunks' buffers are made: the install's peak stays that of an
	// archive's.
	trim.Heap()
	f := &chunks.Fetcher{Src: t.r.svc.Source, Cache: d.cache}
	got, err := f.Fetch(ctx, missing)
	// Nor what the fetch left, heap or code (the store's client, rarely
	// needed again: a chunk read back that does not match).
	trim.Heap()
	trim.Text()
	backed := 0
	if err == nil {
		backed, err = d.unpack(ctx, f, backing, &got)
	}
	// The current release's record goes before the new one is saved: the
	// two are not in memory at once.
	backing.Close()
	backing = nil
	if err == nil {
		d.settle()
		t.sums = digests{MD5: d.idx.Archive.MD5, SHA256: d.idx.Archive.SHA256, Size: d.idx.Archive.Size}
		if c := d.claims; c != nil {
			t.claims = c
			if p := t.pending; p != nil {
				// The release is known by its archive's signature (which
				// vouches for the archive the index was made from), as
				// after an archive install: its time, not the index's
				// (signed first), is the replay high-water mark.
				t.claims = &p.Claims
			}
			// The index is signed: the archive's checksum in it, which
			// the update is known by, is the publisher's, not a store's
			// claim, so a failure of this release may trip the breaker.
			// Unsigned, it is any bucket writer's word: it may not.
			t.verified = true
			t.logger.Info("signature verified", "of", "chunk index", "key_id", fmt.Sprintf("%016X", c.KeyID), "version", c.Version,
				"publisher", c.Publisher, "signed", c.Time)
		}
		if t.r.obs != nil {
			t.r.obs.Downloaded(t.r.svc.Name, got.Bytes)
		}
		t.logger.Info("downloaded and verified", "format", "chunks", "chunks", len(d.idx.Chunks), "fetched_chunks", got.Chunks,
			"fetched_bytes", got.Bytes, "archive_bytes", d.idx.Archive.Size, "linked_files", d.linked, "linked_bytes", d.linkedBytes, "release_chunks", backed, "trusted_chunks", d.trusted, "tar_sha256", d.idx.Tar.SHA256,
			"md5", t.sums.MD5, "sha256", t.sums.SHA256)
		return true, nil
	}
	if ctx.Err() != nil {
		return false, fmt.Errorf("fetch the chunks of %s: %w", t.info.Key, err)
	}
	if d.skel != nil {
		d.skel.Close() // the archive's install keeps its own
		d.skel = nil
	}
	if errors.Is(err, artifact.ErrCorrupt) {
		// A chunk fetched may be the wrong one: start the cache afresh.
		d.cache.Clear()
	}
	t.logger.Warn("delta failed; fetching the archive", "error", err)
	return false, nil
}

// unpack streams the tar reassembled from the cache, the current
// release (backing) and the store, each chunk checked against its
// SHA-256 before it is unpacked, through the same confined extraction as
// an archive. It returns the chunks read back from the current release.
func (d *delta) unpack(ctx context.Context, f *chunks.Fetcher, backing *chunks.Backing, got *chunks.Fetched) (int, error) {
	t := d.t
	if err := t.freshStage(); err != nil {
		return 0, err
	}
	skel := d.cache.Skeleton()
	d.skel = skel
	t.onUndo(func(context.Context) { skel.Close() })
	// Reading and checking on one core (the stream's goroutine),
	// unpacking on the other.
	s := d.cache.StreamWith(d.idx, chunks.StreamOptions{
		Backing: backing,
		Fetch: func(ch chunks.Chunk) error {
			g, err := f.One(ctx, ch)
			got.Chunks += g.Chunks
			got.Bytes += g.Bytes
			return err
		},
		Tee: d.skel,
	})
	defer s.Close()
	opt := t.unpackOptions()
	opt.Format = archive.Tar
	d.record(&opt)
	reuse := d.reuser()
	if reuse != nil {
		defer reuse.Close()
		reuse.Backing = backing
		opt.Reuse = reuse.Reuse
		made := opt.Made
		opt.Made = func(e *archive.Entry, st archive.FileStat) {
			made(e, st)
			if reuse.LinkedTrusted(e.Name) {
				backing.Relinked(e.Name, st)
			}
		}
	}
	_, xerr := archive.Extract(ctx, s, t.stage, opt)
	// The tar's verdict first (the rest of it read and checked): a
	// mismatch explains any unpack error.
	if _, err := io.Copy(io.Discard, s); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		return 0, fmt.Errorf("reassemble %s: %w", t.info.Key, err)
	}
	s.Close()
	if reuse != nil {
		d.linked, d.linkedBytes = reuse.Linked, reuse.Bytes
		// A file linked from the current release whose bytes there were
		// found not to be the chunk's (written in place with its
		// modification time put back): the link would install them.
		if name, ok := reuse.Overlaps(s.Replaced); ok {
			return 0, fmt.Errorf("unpack the chunks of %s: %s, linked from the current release, no longer holds its content there", t.info.Key, name)
		}
	}
	if xerr != nil {
		return 0, fmt.Errorf("unpack the chunks of %s: %w", t.info.Key, xerr)
	}
	if err := syncFS(t.stage); err != nil {
		return 0, fmt.Errorf("sync %s: %w", t.stage, err)
	}
	d.trusted = s.Trusted
	return s.Backed, nil
}

// fill shapes the extraction of the archive: the skeleton of its tar
// (headers and padding, not the files' content) is written to the cache,
// and the files made are recorded. Nothing without an index. The skeleton
// is dropped unless filled is called, after the archive verified.
func (d *delta) fill(opt *archive.Options) {
	if d == nil {
		return
	}
	skel := d.cache.Skeleton()
	d.skel = skel
	d.t.onUndo(func(context.Context) { skel.Close() })
	opt.Tee = skel
	d.record(opt)
}

// record has the files an extraction makes recorded, for the next delta
// to read its unchanged chunks back from them, and to link those that do
// not change.
func (d *delta) record(opt *archive.Options) {
	// Written to a spool as the files are made, not held: the record of
	// 13,193 files took 3 MiB of the install's peak.
	if d.files != nil {
		d.files.Discard() // a delta that failed: the archive's install records its own
	}
	files := chunks.NewFilesSpooled(d.t.id, d.owner(), d.idx, d.filesPath()+".spool")
	d.files = files
	d.t.onUndo(func(context.Context) { files.Discard() })
	opt.Made = d.files.Made
}

// owner says for whom and by whom files are made: a delta links files
// only from a release made for the same.
func (d *delta) owner() string {
	u := d.t.r.svc.Unpack
	return fmt.Sprintf("%d:%d:%d:%d", u.UID, u.GID, os.Geteuid(), os.Getegid())
}

// filesPath is where the record of the current release's files is kept.
func (d *delta) filesPath() string { return filepath.Join(d.t.r.lay.dir, "chunks.files") }

// saveFiles keeps the record of the files of the release just unpacked.
func (d *delta) saveFiles() {
	if d.files == nil {
		return
	}
	if d.linked > 0 {
		// Linked files share their inodes with the current release,
		// which its application may write before this one's switch: the
		// switch checks them. A release that linked none (an archive
		// install, a delta without links) holds only files the agent
		// made, as an install without chunks does: nothing to check
		// (13,193 files opened and fstat'ed: about 0.1 s).
		d.t.files = d.files
	}
	if err := d.files.Save(d.filesPath()); err != nil {
		d.t.logger.Warn("chunk cache: cannot record the release's files; the next delta writes them all", "error", err)
	}
}

// reuser offers the files of the current release that can be linked
// into the new one (chunks.Reuser), or nil: chunk_links = false, no
// current release, or no
// record of its files (made by an install without an index), or made
// for another owner.
func (d *delta) reuser() *chunks.Reuser {
	t := d.t
	if !t.r.svc.ChunkLinks {
		return nil
	}
	old := d.current()
	if old == nil || old.Owner != d.owner() {
		return nil
	}
	r, err := chunks.NewReuser(old, t.r.lay.releaseDir(old.Release), d.idx)
	if err != nil {
		t.logger.Debug("files of the current release not linked", "error", err)
		return nil
	}
	return r
}

// filled ends an archive install that kept the tar's skeleton: the
// next release can be a delta.
func (d *delta) filled() {
	if d == nil || d.skel == nil {
		return
	}
	d.settle()
	d.t.logger.Info("chunk cache filled", "skeleton_bytes", d.cache.Size(), "files", d.files.Len())
}

// settle names the skeleton of the release just unpacked, records it
// with its files, and leaves nothing else in the cache: the release
// holds the content of the chunks fetched for it.
// The record of the current release, and its skeleton, are kept until
// the release just unpacked is current: if it never is (a staged release
// replaced by a newer one, an install that failed), the next delta is
// still read from the current release.
func (d *delta) settle() {
	d.cur = nil
	trim.Heap()
	var keep []string
	name := d.t.id + ".skel"
	if d.skel != nil && d.skel.Commit(name) && d.files != nil {
		d.files.Skel, d.files.SkelSize, d.files.Holes, d.files.SkelSHA256 = name, d.skel.Size(), d.skel.Holes, d.skel.SHA256()
		keep = append(keep, name)
	}
	if cur := d.keepCurrent(); cur != nil && cur.Skel != "" {
		keep = append(keep, cur.Skel)
	}
	if err := d.cache.Settle(keep...); err != nil {
		d.t.logger.Warn("chunk cache", "error", err)
	}
	d.cur = nil
	trim.Heap()
	d.saveFiles()
}

// prevPath keeps the record of the current release while the next one
// is being installed.
func (d *delta) prevPath() string { return d.filesPath() + ".prev" }

// keepCurrent moves the record of the current release aside before the
// record of the release just unpacked replaces it, and returns it; nil
// when there is none.
func (d *delta) keepCurrent() *chunks.Files {
	cur := d.t.st.Release
	if old, err := chunks.LoadFilesHead(d.filesPath()); err == nil && old.Release == cur && cur != d.t.id {
		if os.Rename(d.filesPath(), d.prevPath()) == nil {
			return old
		}
	}
	if prev, err := chunks.LoadFilesHead(d.prevPath()); err == nil && prev.Release == cur && cur != d.t.id {
		return prev
	}
	os.Remove(d.prevPath())
	return nil
}

// hasRecord reports whether a record of the current release's files may
// be there to read (current reads it).
func (d *delta) hasRecord() bool {
	if d.curRead {
		return d.cur != nil
	}
	if d.t.st.Release == "" {
		return false
	}
	for _, p := range []string{d.filesPath(), d.prevPath()} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// current is the record of the current release's files, or nil.
func (d *delta) current() *chunks.Files {
	if d.curRead {
		return d.cur
	}
	d.curRead = true
	t := d.t
	cur := t.st.Release
	if cur == "" || !t.r.lay.present(cur) {
		return nil
	}
	for _, p := range []string{d.filesPath(), d.prevPath()} {
		if f, err := chunks.LoadFiles(p); err == nil && f.Release == cur {
			d.cur = f
			return f
		}
	}
	return nil
}

// backing reads back the chunks of the current release from its files
// and its skeleton, or nil: no current release, or no record of it.
func (d *delta) backing() *chunks.Backing {
	t := d.t
	old := d.current()
	if old == nil {
		return nil
	}
	b, err := d.cache.NewBacking(old, t.r.lay.releaseDir(old.Release))
	if err != nil {
		t.logger.Debug("the current release backs no delta", "error", err)
		return nil
	}
	return b
}

// freshStage makes an empty staging directory for the release.
func (t *txn) freshStage() error {
	if err := os.RemoveAll(t.stage); err != nil {
		return err
	}
	return os.MkdirAll(t.stage, 0o755)
}
