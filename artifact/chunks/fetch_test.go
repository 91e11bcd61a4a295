package chunks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/file"
)

// bigIndex writes beside dir/app.tar an index of n chunks made, it says,
// from exactly that version, well formed, and returns its source, the
// version and the index's size.
func bigIndex(t *testing.T, dir string, n int) (artifact.Source, artifact.Info, int) {
	t.Helper()
	os.WriteFile(filepath.Join(dir, "app.tar"), []byte("x"), 0o644)
	src := file.New(filepath.Join(dir, "app.tar"))
	info, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	sum := strings.Repeat("a", 64)
	if info.SHA256 != "" {
		sum = info.SHA256
	}
	fmt.Fprintf(&b, `{"format":1,"archive":{"size":%d,"md5":%q,"sha256":%q},"tar":{"size":%d,"sha256":"%s"},"chunks":[`, info.Size, info.MD5, sum, n, sum)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sha256":"%064x","size":1,"stored":1}`, i)
	}
	b.WriteString("]}")
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix), b.Bytes(), 0o644)
	return src, info, b.Len()
}

// An index whose signature does not verify is refused before it is
// parsed: an index of a few hundred thousand chunks that a bucket writer
// put beside the archive costs an agent that trusts keys the index's
// bytes, not the hundreds of MiB its parsing takes.
func TestLoadChecksTheSignatureBeforeParsing(t *testing.T) {
	dir := t.TempDir()
	src, info, size := bigIndex(t, dir, 100_000)
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix+".minisig"), []byte("not a signature"), 0o644)
	accept := func(context.Context, []byte, []byte) error { return nil }
	if _, err := Load(context.Background(), src, info, accept); err != nil {
		t.Fatalf("the index, its signature accepted, does not load: %v", err)
	}
	refused := errors.New("refused")
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := Load(context.Background(), src, info, func(context.Context, []byte, []byte) error { return refused })
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, refused) || !errors.Is(err, ErrNoIndex) {
		t.Fatalf("the index was not refused for its signature: %v", err)
	}
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 2*uint64(size) {
		t.Fatalf("an index of %d bytes, refused, took %d bytes", size, got)
	}
}

// An agent without trusted_keys reads an index no one vouches for: one
// over MaxUnsignedIndex is refused unread (the archive is fetched), with
// an error that names the limit, where a signed one of the same size
// loads; one of a large real release (30,000 chunks, about 30 GiB of
// tar) loads unsigned.
func TestLoadCapsAnUnsignedIndex(t *testing.T) {
	if n := MaxUnsignedIndex / entryBytes; n < 30_000 || n > 50_000 {
		t.Fatalf("MaxUnsignedIndex allows about %d chunks", n)
	}
	dir := t.TempDir()
	// Entries of a real index take about 110 bytes; these take 98, so
	// the index is over the cap by more than the estimate's error.
	src, info, size := bigIndex(t, dir, MaxUnsignedIndex/98+1000)
	if size <= MaxUnsignedIndex {
		t.Fatalf("the index takes %d bytes", size)
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := Load(context.Background(), src, info, nil)
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, ErrIndexTooLarge) || !errors.Is(err, ErrNoIndex) || !strings.Contains(err.Error(), fmt.Sprint(MaxUnsignedIndex)) {
		t.Fatalf("an unsigned index of %d bytes: %v", size, err)
	}
	t.Logf("refused: %v", err)
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 1<<20 {
		t.Fatalf("an unsigned index of %d bytes, refused, took %d bytes", size, got)
	}
	accept := func(context.Context, []byte, []byte) error { return nil }
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix+".minisig"), []byte("a signature"), 0o644)
	if _, err := Load(context.Background(), src, info, accept); err != nil {
		t.Fatalf("the same index, signed, does not load: %v", err)
	}

	src, info, _ = bigIndex(t, t.TempDir(), 30_000)
	if idx, err := Load(context.Background(), src, info, nil); err != nil || len(idx.Chunks) != 30_000 {
		t.Fatalf("an unsigned index of 30,000 chunks does not load: %v", err)
	}
}

// An index whose size the store does not give is read up to the cap.
func TestReadIndexStopsAtTheCap(t *testing.T) {
	b, err := readIndex(bytes.NewReader(make([]byte, 100)), -1, 100)
	if err != nil || len(b) != 100 {
		t.Fatalf("100 bytes, cap 100: %d, %v", len(b), err)
	}
	if _, err := readIndex(bytes.NewReader(make([]byte, 101)), -1, 100); !errors.Is(err, errOverLimit) {
		t.Fatalf("101 bytes, cap 100: %v", err)
	}
}

// dropping is a store whose chunk bodies drop after their first bytes.
type dropping struct{ *file.Source }

func (d dropping) Sibling(key string) artifact.Source {
	return dropping{d.Source.Sibling(key).(*file.Source)}
}

func (d dropping) Open(ctx context.Context, info artifact.Info) (io.ReadCloser, error) {
	body, err := d.Source.Open(ctx, info)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(body, 100), iotest.ErrReader(syscall.ECONNRESET)), body}, nil
}

// A chunk whose body drops on the way (after the store's retries) is a
// failed download, not a corrupt chunk: it is not fetched again as one
// that failed its check, and the delta that needed it does not empty
// the cache (the skeleton of the current release with it).
func TestFetchDropIsNotCorrupt(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 600<<10)
	rand.NewChaCha8([32]byte{9}).Read(data)
	sum := sha256.Sum256(data)
	enc, _ := zstd.NewWriter(nil)
	stored := enc.EncodeAll(data, nil)
	ch := Chunk{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Stored: int64(len(stored))}
	os.MkdirAll(filepath.Join(dir, Prefix), 0o755)
	os.WriteFile(filepath.Join(dir, Key(ch.SHA256)), stored, 0o644)
	os.WriteFile(filepath.Join(dir, "app.tar"), []byte("x"), 0o644)
	var logs bytes.Buffer
	c := &Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1 << 30, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	f := &Fetcher{Src: dropping{file.New(filepath.Join(dir, "app.tar"))}, Cache: c}
	_, err := f.Fetch(context.Background(), []Chunk{ch})
	if err == nil || errors.Is(err, artifact.ErrCorrupt) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a dropped body: %v", err)
	}
	if strings.Contains(logs.String(), "failed its check") {
		t.Fatalf("a dropped body was taken for a chunk that failed its check:\n%s", logs.String())
	}
	// The whole body: fetched.
	f.Src = file.New(filepath.Join(dir, "app.tar"))
	if _, err := f.Fetch(context.Background(), []Chunk{ch}); err != nil || !c.Has(ch) {
		t.Fatalf("fetched: %v", err)
	}
}

// slow is a store whose bodies come in small pieces, a few milliseconds
// apart (a slow link), and which counts its GETs.
type slow struct {
	*file.Source
	gets *atomic.Int32
}

func (s slow) Sibling(key string) artifact.Source {
	return slow{s.Source.Sibling(key).(*file.Source), s.gets}
}

func (s slow) Open(ctx context.Context, info artifact.Info) (io.ReadCloser, error) {
	s.gets.Add(1)
	body, err := s.Source.Open(ctx, info)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{&trickle{ctx, body}, body}, nil
}

// trickle ends with its request's context, as an HTTP body does.
type trickle struct {
	ctx context.Context
	r   io.Reader
}

func (t *trickle) Read(p []byte) (int, error) {
	time.Sleep(3 * time.Millisecond)
	if err := t.ctx.Err(); err != nil {
		return 0, err
	}
	return t.r.Read(p[:min(len(p), 16<<10)])
}

// The GETs of a fetch overlap but their bodies are decompressed one at a
// time: a body waiting its turn is not a stalled one. On a slow link,
// four chunks take four GETs, none dropped for the stall timeout.
func TestFetchSlowLinkDoesNotStall(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, Prefix), 0o755)
	os.WriteFile(filepath.Join(dir, "app.tar"), []byte("x"), 0o644)
	enc, _ := zstd.NewWriter(nil)
	var missing []Chunk
	for i := range 4 {
		data := make([]byte, 600<<10)
		rand.NewChaCha8([32]byte{10, byte(i)}).Read(data)
		sum := sha256.Sum256(data)
		stored := enc.EncodeAll(data, nil)
		ch := Chunk{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Stored: int64(len(stored))}
		os.WriteFile(filepath.Join(dir, Key(ch.SHA256)), stored, 0o644)
		missing = append(missing, ch)
	}
	var gets atomic.Int32
	// A body takes about 120 ms (38 pieces of 16 KiB, 3 ms apart); the
	// fourth waits for three.
	src := artifact.Retry(slow{file.New(filepath.Join(dir, "app.tar")), &gets}, artifact.Policy{Tries: 2, Stall: 200 * time.Millisecond}, nil)
	c := &Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1 << 30}
	f := &Fetcher{Src: src, Cache: c}
	got, err := f.Fetch(context.Background(), missing)
	if err != nil || got.Chunks != 4 {
		t.Fatalf("fetched %d chunks: %v", got.Chunks, err)
	}
	if n := gets.Load(); n != 4 {
		t.Fatalf("%d GETs for 4 chunks", n)
	}
}
