package archive_test

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/chunks"
	filestore "github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/internal/prefetch"
)

// BenchmarkExtractFile unpacks the archive $DROPSHIP_BENCH_ARCHIVE into
// a directory under $DROPSHIP_BENCH_DIR (tmpfs, say) as the agent does:
// hashed (MD5 and SHA-256) in a stage of its own, decompressed, unpacked.
// Without the variable it is skipped: `make bench` measures from MinIO.
func BenchmarkExtractFile(b *testing.B) {
	src := os.Getenv("DROPSHIP_BENCH_ARCHIVE")
	if src == "" {
		b.Skip("DROPSHIP_BENCH_ARCHIVE not set")
	}
	fi, err := os.Stat(src)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	// With $DROPSHIP_BENCH_FILL set, the chunk cache is filled from the
	// tar as the agent does for a version with a chunk index.
	var idx *chunks.Index
	if os.Getenv("DROPSHIP_BENCH_FILL") != "" {
		store := b.TempDir()
		if _, err := chunks.Publish(context.Background(), filestore.Store{}, store, "a.tar.zst", src, nil); err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(filepath.Join(store, "a.tar.zst"+chunks.IndexSuffix))
		if err != nil {
			b.Fatal(err)
		}
		idx, err = chunks.Parse(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		b.StopTimer()
		dir, err := os.MkdirTemp(os.Getenv("DROPSHIP_BENCH_DIR"), "extract-*")
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		h := io.TeeReader(f, io.MultiWriter(md5.New(), sha256.New()))
		ahead := prefetch.New(h, 64<<10, 4)
		opt := archive.Options{Name: src, MaxFiles: 1 << 20, UID: -1, GID: -1}
		var fill *chunks.Skeleton
		if idx != nil {
			fill = (&chunks.Cache{Dir: filepath.Join(dir, ".cache"), Max: 4 << 30}).Skeleton()
			opt.Tee = fill
			opt.Made = chunks.NewFiles("r", "", idx).Made
		}
		if _, err := archive.Extract(context.Background(), ahead, dir, opt); err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, ahead)
		ahead.Close()
		if fill != nil {
			fill.Commit("r.skel")
		}
		b.StopTimer()
		f.Close()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}
