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

// An index whose signature does not verify is refused before it is
// parsed: an index of a few hundred thousand chunks that a bucket writer
// put beside the archive costs an agent that trusts keys the index's
// bytes, not the hundreds of MiB its parsing takes.
func TestLoadChecksTheSignatureBeforeParsing(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "app.tar"), []byte("x"), 0o644)
	src := file.New(filepath.Join(dir, "app.tar"))
	info, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Made, it says, from exactly this version.
	var b bytes.Buffer
	sum := strings.Repeat("a", 64)
	if info.SHA256 != "" {
		sum = info.SHA256
	}
	const n = 100_000
	fmt.Fprintf(&b, `{"format":1,"archive":{"size":%d,"md5":%q,"sha256":%q},"tar":{"size":%d,"sha256":"%s"},"chunks":[`, info.Size, info.MD5, sum, n, sum)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sha256":"%064x","size":1,"stored":1}`, i)
	}
	b.WriteString("]}")
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix), b.Bytes(), 0o644)
	os.WriteFile(filepath.Join(dir, "app.tar"+IndexSuffix+".minisig"), []byte("not a signature"), 0o644)
	if _, err := Load(context.Background(), src, info, nil); err != nil {
		t.Fatalf("the index, unsigned, does not load: %v", err)
	}
	refused := errors.New("refused")
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err = Load(context.Background(), src, info, func(context.Context, []byte, []byte) error { return refused })
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, refused) || !errors.Is(err, ErrNoIndex) {
		t.Fatalf("the index was not refused for its signature: %v", err)
	}
	if got := m1.TotalAlloc - m0.TotalAlloc; got > 2*uint64(b.Len()) {
		t.Fatalf("an index of %d bytes, refused, took %d bytes", b.Len(), got)
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
