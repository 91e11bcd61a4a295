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

// installArchive is the agent's archive path with the cache filled from
// the tar as it is unpacked.
func installArchive(t *testing.T, src artifact.Source, pin artifact.Info, idx *chunks.Index, cache *chunks.Cache) string {
	t.Helper()
	body, err := src.Open(context.Background(), pin)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	v := artifact.NewVerifier(body, pin)
	dir := t.TempDir()
	fill := cache.Filler(idx)
	if _, err := archive.Extract(context.Background(), v, dir, archive.Options{Name: "app.tar.zst", Tee: fill}); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(); err != nil {
		t.Fatal(err)
	}
	fill.Commit()
	if err := cache.Keep(idx); err != nil {
		t.Fatal(err)
	}
	return dir
}

// installDelta is the agent's delta path; the error is the first of
// fetching, reassembling and unpacking.
func installDelta(ctx context.Context, src artifact.Source, idx *chunks.Index, cache *chunks.Cache, dir string) (chunks.Fetched, error) {
	missing, _ := cache.Missing(idx)
	got, err := (&chunks.Fetcher{Src: src, Cache: cache}).Fetch(ctx, missing)
	if err != nil {
		return got, err
	}
	s := cache.Stream(idx)
	defer s.Close()
	_, xerr := archive.Extract(ctx, s, dir, archive.Options{Format: archive.Tar})
	if _, err := io.Copy(io.Discard, s); err != nil {
		return got, err
	}
	return got, xerr
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
	sameFiles(t, installArchive(t, src, pin1, idx1, warm), files1)
	if missing, _ := warm.Missing(idx1); len(missing) != 0 {
		t.Fatalf("after the archive install, %d chunks of it are not in the cache", len(missing))
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
		missing, stored := cache.Missing(idx2)
		if len(missing) == 0 || len(missing) >= len(idx2.Chunks)/2 {
			t.Fatalf("%d of %d chunks missing after one file of 8 changed", len(missing), len(idx2.Chunks))
		}
		dir := t.TempDir()
		got, err := installDelta(ctx, src, idx2, cache, dir)
		if err != nil {
			t.Fatal(err)
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
		if _, err := installDelta(ctx, f, idx2, cacheOf(t), dir); err != nil {
			t.Fatalf("a chunk corrupt once was not fetched again: %v", err)
		}
		if f.opened.Load() < 2 {
			t.Fatal("no chunk was corrupted")
		}
		sameFiles(t, dir, files2)
	})

	t.Run("CorruptChunkIsRefused", func(t *testing.T) {
		cache := cacheOf(t)
		missing, _ := cache.Missing(idx2)
		// Corrupt on the wire every time: refused after a second try.
		f := &flaky{Source: src, corrupt: 1 << 30}
		dir := t.TempDir()
		_, err := installDelta(ctx, f, idx2, cache, dir)
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
		// An index naming a chunk the store does not have.
		bad := *idx2
		bad.Chunks = append([]chunks.Chunk(nil), idx2.Chunks...)
		missing, _ := cache.Missing(idx2)
		for i, c := range bad.Chunks {
			if c.SHA256 == missing[0].SHA256 {
				bad.Chunks[i].SHA256 = fmt.Sprintf("%064x", i+1)
			}
		}
		s, idx := tampered(t, &bad)
		dir := t.TempDir()
		if _, err := installDelta(ctx, s, idx, cache, dir); !errors.Is(err, artifact.ErrNotFound) {
			t.Fatalf("a missing chunk was not refused: %v", err)
		}
		dirEmpty(t, dir)
	})

	t.Run("TarNotMatchingTheIndexIsRefused", func(t *testing.T) {
		bad := *idx2
		bad.Tar.SHA256 = fmt.Sprintf("%064x", 7)
		s, idx := tampered(t, &bad)
		if _, err := installDelta(ctx, s, idx, cacheOf(t), t.TempDir()); !errors.Is(err, artifact.ErrCorrupt) {
			t.Fatalf("a tar whose SHA-256 is not the index's was taken: %v", err)
		}
	})

	t.Run("CacheIsBounded", func(t *testing.T) {
		cache := &chunks.Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 3 << 20}
		sameFiles(t, installArchive(t, src, pin2, idx2, cache), files2)
		if n := cache.Size(); n > cache.Max || n == 0 {
			t.Fatalf("the cache holds %d bytes, bound %d", n, cache.Max)
		}
		// And after a delta on top of it.
		if _, err := installDelta(ctx, src, idx2, cache, t.TempDir()); err != nil {
			t.Fatal(err)
		}
		cache.Keep(idx2)
		if n := cache.Size(); n > cache.Max {
			t.Fatalf("the cache holds %d bytes, bound %d", n, cache.Max)
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
