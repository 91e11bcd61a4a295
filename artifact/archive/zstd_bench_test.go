package archive_test

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"io"
	"os"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
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
		if _, err := archive.Extract(context.Background(), ahead, dir, archive.Options{Name: src, MaxFiles: 1 << 20}); err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, ahead)
		ahead.Close()
		b.StopTimer()
		f.Close()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}
