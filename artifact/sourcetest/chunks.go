package sourcetest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/chunks"
)

// ChunkHarness adapts one store to the chunked-delta cases: each test
// gets a bucket, container or directory of its own.
type ChunkHarness struct {
	Store func(t *testing.T) (artifact.Store, string)
}

// release is a tar of n files of 1 MiB (made up, seeded by name and
// version) and a small text file, zstd-compressed.
func release(t *testing.T, n int, changed map[int]int) (files map[string][]byte, archiveBytes []byte) {
	t.Helper()
	files = map[string][]byte{}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for i := range n {
		name := fmt.Sprintf("bin/part%02d", i)
		b := make([]byte, 1<<20)
		var seed [32]byte
		seed[0], seed[1] = byte(i), byte(changed[i])
		rand.NewChaCha8(seed).Read(b)
		files[name] = b
	}
	files["README"] = []byte(fmt.Sprintf("release %v\n", changed))
	for i := range n + 1 {
		name := "README"
		if i < n {
			name = fmt.Sprintf("bin/part%02d", i)
		}
		b := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	tw.Close()
	enc, _ := zstd.NewWriter(nil)
	return files, enc.EncodeAll(tb.Bytes(), nil)
}

// publishRelease writes the chunks, the index and the archive, as
// `dropship publish` does.
func publishRelease(t *testing.T, st artifact.Store, ct, key string, data []byte) artifact.Info {
	t.Helper()
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "app.tar.zst")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := chunks.Publish(ctx, st, ct, key, p, nil); err != nil {
		t.Fatal(err)
	}
	info, err := st.Publish(ctx, ct, key, p, 0)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func retried(src artifact.Source) artifact.Source {
	return artifact.Retry(src, artifact.Policy{Tries: 3, Backoff: 10 * time.Millisecond, Stall: 10 * time.Second}, nil)
}

// installed is a release unpacked with an index: its directory, the
// record of its files and the skeleton of its tar in the cache.
type installed struct {
	dir   string
	files *chunks.Files
}

// installArchive is the agent's archive path: the tar's skeleton kept in
// the cache and its files recorded as it is unpacked.
func installArchive(t *testing.T, src artifact.Source, pin artifact.Info, idx *chunks.Index, cache *chunks.Cache) installed {
	t.Helper()
	body, err := src.Open(context.Background(), pin)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	v := artifact.NewVerifier(body, pin)
	dir := t.TempDir()
	skel := cache.Skeleton()
	defer skel.Close()
	files := chunks.NewFiles("v", "", idx)
	if _, err := archive.Extract(context.Background(), v, dir, archive.Options{Name: "app.tar.zst", Tee: skel, Made: files.Made}); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(); err != nil {
		t.Fatal(err)
	}
	name := ""
	if skel.Commit("v.skel") {
		name = "v.skel"
		files.Skel, files.SkelSize, files.Holes = name, skel.Size(), skel.Holes
	}
	if err := cache.Settle(name); err != nil {
		t.Fatal(err)
	}
	return installed{dir, files}
}

// delta is what installDelta did.
type delta struct {
	chunks.Fetched
	backed   int // chunks read back from the current release
	replaced int // of those it held, chunks fetched instead
}

// installDelta is the agent's delta path over the release cur; the error
// is the first of fetching, reassembling and unpacking.
func installDelta(ctx context.Context, src artifact.Source, idx *chunks.Index, cache *chunks.Cache, cur installed, dir string) (delta, error) {
	var d delta
	backing, err := cache.NewBacking(cur.files, cur.dir)
	if err != nil {
		return d, err
	}
	defer backing.Close()
	missing, _ := cache.Missing(idx, backing)
	f := &chunks.Fetcher{Src: src, Cache: cache}
	d.Fetched, err = f.Fetch(ctx, missing)
	if err != nil {
		return d, err
	}
	s := cache.StreamWith(idx, chunks.StreamOptions{Backing: backing, Fetch: func(ch chunks.Chunk) error {
		got, err := f.One(ctx, ch)
		d.Chunks += got.Chunks
		d.Bytes += got.Bytes
		return err
	}})
	defer s.Close()
	_, xerr := archive.Extract(ctx, s, dir, archive.Options{Format: archive.Tar})
	if _, err := io.Copy(io.Discard, s); err != nil {
		return d, err
	}
	s.Close()
	d.backed, d.replaced = s.Backed, len(s.Replaced)
	return d, xerr
}

func sameFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s differs from the release's", name)
		}
	}
}

func dirEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, _ := e.Info(); fi != nil && !fi.IsDir() {
			t.Fatalf("%s was unpacked", e.Name())
		}
		sub, _ := os.ReadDir(filepath.Join(dir, e.Name()))
		for _, s := range sub {
			if fi, _ := s.Info(); fi != nil && fi.Size() > 0 {
				t.Fatalf("%s/%s was unpacked", e.Name(), s.Name())
			}
		}
	}
}

// RunChunks runs the chunked-delta cases against a store. Two releases
// are published once (v2: one file of 8 changed) and v1 is installed from
// the archive, filling a cache; each case starts from a copy of it.
func RunChunks(t *testing.T, h ChunkHarness) {
	ctx := context.Background()
	const key = "svc/app.tar.zst"
	st, ct := h.Store(t)
	files1, a1 := release(t, 8, nil)
	pin1 := publishRelease(t, st, ct, key, a1)
	src := retried(st.Source(ct, key))
	idx1, err := chunks.Load(ctx, src, pin1, nil)
	if err != nil {
		t.Fatal(err)
	}
	warm := &chunks.Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 64 << 20}
	v1 := installArchive(t, src, pin1, idx1, warm)
	sameFiles(t, v1.dir, files1)
	// The cache holds the tar's headers, not its files' content.
	if n := warm.Size(); n == 0 || n > 64<<10 {
		t.Fatalf("after the archive install of a %d-byte tar, the cache holds %d bytes", idx1.Tar.Size, n)
	}
	files2, a2 := release(t, 8, map[int]int{3: 1})
	pin2 := publishRelease(t, st, ct, key, a2)
	idx2, err := chunks.Load(ctx, src, pin2, nil)
	if err != nil {
		t.Fatal(err)
	}
	cacheOf := func(t *testing.T) *chunks.Cache {
		c := &chunks.Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: warm.Max}
		if err := os.CopyFS(c.Dir, os.DirFS(warm.Dir)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// current is a copy of v1's release, for a case to change.
	current := func(t *testing.T) installed {
		d := filepath.Join(t.TempDir(), "release")
		if err := os.CopyFS(d, os.DirFS(v1.dir)); err != nil {
			t.Fatal(err)
		}
		f := *v1.files
		return installed{d, &f}
	}
	// tampered publishes idx under another key: the index of an artifact
	// there (the same archive), without touching the shared chunks.
	tampered := func(t *testing.T, idx *chunks.Index) (artifact.Source, *chunks.Index) {
		k := "tampered/" + filepath.Base(t.Name()) + ".tar.zst"
		putIndex(t, st, ct, k, idx)
		s := retried(st.Source(ct, k))
		got, err := chunks.Load(ctx, s, pin2, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s, got
	}

	t.Run("DeltaFetchesOnlyTheChangedChunks", func(t *testing.T) {
		cache := cacheOf(t)
		cur := current(t)
		b, err := cache.NewBacking(cur.files, cur.dir)
		if err != nil {
			t.Fatal(err)
		}
		missing, stored := cache.Missing(idx2, b)
		b.Close()
		if len(missing) == 0 || len(missing) >= len(idx2.Chunks)/2 {
			t.Fatalf("%d of %d chunks missing after one file of 8 changed", len(missing), len(idx2.Chunks))
		}
		dir := t.TempDir()
		got, err := installDelta(ctx, src, idx2, cache, cur, dir)
		if err != nil {
			t.Fatal(err)
		}
		if got.backed == 0 || got.replaced != 0 {
			t.Fatalf("%d chunks read back from the current release, %d of them fetched instead", got.backed, got.replaced)
		}
		if got.Bytes != stored || got.Bytes > idx2.Archive.Size/2 {
			t.Fatalf("fetched %d bytes (%d chunks), expected the %d of the missing chunks, of a %d-byte archive", got.Bytes, got.Chunks, stored, idx2.Archive.Size)
		}
		sameFiles(t, dir, files2)
	})

	t.Run("IndexOfAnotherVersionIsNotUsed", func(t *testing.T) {
		if _, err := chunks.Load(ctx, src, pin1, nil); !errors.Is(err, chunks.ErrNoIndex) {
			t.Fatalf("the index of %s was used for %s: %v", pin2.Checksum(), pin1.Checksum(), err)
		}
	})

	t.Run("CorruptChunkIsRefetchedOnce", func(t *testing.T) {
		f := &flaky{Source: src, corrupt: 1}
		dir := t.TempDir()
		if _, err := installDelta(ctx, f, idx2, cacheOf(t), current(t), dir); err != nil {
			t.Fatalf("a chunk corrupt once was not fetched again: %v", err)
		}
		if f.opened.Load() < 2 {
			t.Fatal("no chunk was corrupted")
		}
		sameFiles(t, dir, files2)
	})

	t.Run("CorruptChunkIsRefused", func(t *testing.T) {
		cache := cacheOf(t)
		missing, _ := cache.Missing(idx2, nil)
		// Corrupt on the wire every time: refused after a second try.
		f := &flaky{Source: src, corrupt: 1 << 30}
		dir := t.TempDir()
		_, err := installDelta(ctx, f, idx2, cache, current(t), dir)
		if !errors.Is(err, artifact.ErrCorrupt) {
			t.Fatalf("a corrupt chunk was not refused: %v", err)
		}
		for _, m := range missing {
			if cache.Has(m) {
				t.Fatal("a corrupt chunk entered the cache")
			}
		}
		dirEmpty(t, dir)
	})

	t.Run("MissingChunkIsRefused", func(t *testing.T) {
		cache := cacheOf(t)
		cur := current(t)
		// An index naming a chunk the store does not have.
		bad := *idx2
		bad.Chunks = append([]chunks.Chunk(nil), idx2.Chunks...)
		b, err := cache.NewBacking(cur.files, cur.dir)
		if err != nil {
			t.Fatal(err)
		}
		missing, _ := cache.Missing(idx2, b)
		b.Close()
		for i, c := range bad.Chunks {
			if c.SHA256 == missing[0].SHA256 {
				bad.Chunks[i].SHA256 = fmt.Sprintf("%064x", i+1)
			}
		}
		s, idx := tampered(t, &bad)
		dir := t.TempDir()
		if _, err := installDelta(ctx, s, idx, cache, cur, dir); !errors.Is(err, artifact.ErrNotFound) {
			t.Fatalf("a missing chunk was not refused: %v", err)
		}
		dirEmpty(t, dir)
	})

	// The application wrote into a file of the current release (same
	// size, in place): the chunks it lies in no longer match and are
	// fetched; the delta installs exactly the new release.
	t.Run("FileEditedInPlaceIsFetched", func(t *testing.T) {
		cache, cur := cacheOf(t), current(t)
		base, err := installDelta(ctx, src, idx2, cacheOf(t), current(t), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(filepath.Join(cur.dir, "bin/part05"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("written by the application"), 300<<10)
		f.Close()
		os.Remove(filepath.Join(cur.dir, "bin/part06")) // and removed another
		dir := t.TempDir()
		got, err := installDelta(ctx, src, idx2, cache, cur, dir)
		if err != nil {
			t.Fatal(err)
		}
		sameFiles(t, dir, files2)
		if got.replaced < 2 || got.Bytes <= base.Bytes {
			t.Fatalf("%d chunks fetched in place of the release's (%d bytes, %d without the edit)", got.replaced, got.Bytes, base.Bytes)
		}
	})

	// A skeleton that lost bytes is not used: nothing of the current
	// release backs the delta, which the agent then takes from the
	// archive. One with a byte changed costs the chunk it lies in.
	t.Run("DamagedSkeleton", func(t *testing.T) {
		cache, cur := cacheOf(t), current(t)
		p := filepath.Join(cache.Dir, cur.files.Skel)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, b[:len(b)-100], 0o600)
		if _, err := cache.NewBacking(cur.files, cur.dir); err == nil {
			t.Fatal("a truncated skeleton was used")
		}
		if missing, _ := cache.Missing(idx2, nil); len(missing) != len(idx2.Chunks) {
			t.Fatalf("without the release, %d of %d chunks missing", len(missing), len(idx2.Chunks))
		}
		b[1024] ^= 1 // in the second header
		os.WriteFile(p, b, 0o600)
		dir := t.TempDir()
		got, err := installDelta(ctx, src, idx2, cache, cur, dir)
		if err != nil {
			t.Fatal(err)
		}
		sameFiles(t, dir, files2)
		if got.replaced != 1 {
			t.Fatalf("%d chunks fetched in place of the release's", got.replaced)
		}
	})

	t.Run("CacheIsBounded", func(t *testing.T) {
		cache := &chunks.Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 3 << 20}
		cur := installArchive(t, src, pin2, idx2, cache)
		if n := cache.Size(); n > cache.Max || n == 0 {
			t.Fatalf("the cache holds %d bytes, bound %d", n, cache.Max)
		}
		// And after a delta on top of it: the chunks fetched for it are
		// not kept (the release holds them).
		if _, err := installDelta(ctx, src, idx2, cache, cur, t.TempDir()); err != nil {
			t.Fatal(err)
		}
		cache.Settle(cur.files.Skel)
		if n := cache.Size(); n > cache.Max || n == 0 {
			t.Fatalf("the cache holds %d bytes, bound %d", n, cache.Max)
		}
		// A bound under the tar's headers keeps nothing.
		tiny := &chunks.Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1024}
		installArchive(t, src, pin2, idx2, tiny)
		if n := tiny.Size(); n != 0 {
			t.Fatalf("the cache holds %d bytes, bound %d", n, tiny.Max)
		}
	})
}

func putIndex(t *testing.T, st artifact.Store, ct, key string, idx *chunks.Index) {
	t.Helper()
	b, _ := json.Marshal(idx)
	p := filepath.Join(t.TempDir(), "index")
	os.WriteFile(p, b, 0o644)
	if _, err := st.Publish(context.Background(), ct, key+chunks.IndexSuffix, p, 0); err != nil {
		t.Fatal(err)
	}
}

// flaky corrupts the first `corrupt` chunk bodies its siblings return
// (one bit flipped): a fault on the wire.
type flaky struct {
	artifact.Source
	corrupt int64
	opened  atomic.Int64
}

func (f *flaky) Name() string { return f.Source.(artifact.Sibling).Name() }

func (f *flaky) Sibling(key string) artifact.Source {
	return &flakySibling{Source: f.Source.(artifact.Sibling).Sibling(key), f: f}
}

type flakySibling struct {
	artifact.Source
	f *flaky
}

func (s *flakySibling) Open(ctx context.Context, pin artifact.Info) (io.ReadCloser, error) {
	rc, err := s.Source.Open(ctx, pin)
	if err != nil || s.f.opened.Add(1) > s.f.corrupt {
		return rc, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	b[len(b)/2] ^= 1
	return io.NopCloser(bytes.NewReader(b)), nil
}
