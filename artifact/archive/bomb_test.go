package archive_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/dropshipd/dropship/artifact/archive"
)

// onDisk is what a tree takes on disk (allocated blocks, so a sparse file
// counts for what it really holds).
func onDisk(t *testing.T, dir string) (bytes int64, entries int) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		entries++
		if fi, err := os.Lstat(p); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				bytes += st.Blocks * 512
			}
		}
		return nil
	})
	return bytes, entries
}

// A few KiB of tar whose sparse entry declares 300 MiB is refused before
// anything is written, in both of GNU tar's sparse encodings.
func TestSparseBombRefused(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"gnu", "pax"} {
		t.Run(format, func(t *testing.T) {
			src := t.TempDir()
			big := filepath.Join(src, "hole")
			f, _ := os.Create(big)
			f.WriteString("x")
			f.Truncate(300 << 20)
			f.Close()
			arch := filepath.Join(t.TempDir(), "bomb.tar.gz")
			if out, err := exec.Command("tar", "--sparse", "--format="+format, "-czf", arch, "-C", src, "hole").CombinedOutput(); err != nil {
				t.Fatalf("tar: %v %s", err, out)
			}
			data, _ := os.ReadFile(arch)
			if len(data) > 8<<10 {
				t.Fatalf("the bomb is %d bytes, want a few KiB", len(data))
			}
			dir, _, err := extract(t, data, archive.Options{})
			if err == nil || !strings.Contains(err.Error(), "sparse") {
				t.Fatalf("err = %v", err)
			}
			if n, _ := onDisk(t, dir); n >= 64<<20 {
				t.Fatalf("%d bytes on disk at the refusal", n)
			}
		})
	}
}

// A header that declares more than max_size is refused before a byte of
// it is written, even if its data never follows.
func TestDeclaredSizeCountsFirst(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "huge", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5 << 30})
	tw.Write(make([]byte, 1<<20)) // the stream ends long before 5 GiB
	dir, _, err := extract(t, buf.Bytes(), archive.Options{MaxSize: 1 << 30})
	if err == nil || !strings.Contains(err.Error(), "declares 5368709120 bytes") || !strings.Contains(err.Error(), "max_size") {
		t.Fatalf("err = %v", err)
	}
	if n, entries := onDisk(t, dir); n != 0 || entries != 0 {
		t.Fatalf("%d bytes in %d entries written", n, entries)
	}
}

// A decompression bomb is refused while it is written: little of it is
// on disk when the ratio trips.
func TestRatioJudgedWhileWriting(t *testing.T) {
	t.Parallel()
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 300 << 20})
	tw.Write(make([]byte, 300<<20))
	tw.Close()
	var z bytes.Buffer
	w, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	w.Write(tarball.Bytes())
	w.Close()
	dir, _, err := extract(t, z.Bytes(), archive.Options{})
	if err == nil || !strings.Contains(err.Error(), "compression ratio") {
		t.Fatalf("err = %v (%d compressed bytes)", err, z.Len())
	}
	if n, _ := onDisk(t, dir); n >= 64<<20 {
		t.Fatalf("%d bytes on disk at the refusal", n)
	}
}

// Directories made implicitly for an entry count as entries, and depth
// and name length are bounded, each refusal named; nothing is created
// for a refused name.
func TestDirectoryBombRefused(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat("d/", 1500) + "f" // 3,001 bytes: a PAX name
	for _, tc := range []struct {
		name string
		data []byte
		opt  archive.Options
		want string
		max  int // entries left on disk at most
	}{
		{"implicit directories count", makeTar(t, file("a/b/c/d/f", "x")), archive.Options{MaxFiles: 2}, "max_files = 2", 2},
		{"deep PAX name", makeTar(t, file(deep, "x")), archive.Options{MaxFiles: 2}, "over max_depth = 64", 0},
		{"depth", makeTar(t, file(strings.Repeat("d/", 10)+"f", "x")), archive.Options{MaxDepth: 5}, "11 levels deep, over max_depth = 5", 0},
		{"long name", makeTar(t, file(strings.Repeat("abcdefg/", 600)+"f", "x")), archive.Options{MaxDepth: 1000}, "name of 4801 bytes, over the system's 4095", 0},
		{"long component", makeTar(t, file("a/"+strings.Repeat("n", 300), "x")), archive.Options{}, "name component of 300 bytes", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, err := extract(t, tc.data, tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, entries := onDisk(t, dir); entries > tc.max {
				t.Fatalf("%d entries created", entries)
			}
		})
	}
	// Within the bounds, an ordinary tree still unpacks.
	if _, st, err := extract(t, makeTar(t, file("a/b/c/f", "x")), archive.Options{MaxFiles: 4}); err != nil || st.Entries != 4 {
		t.Fatalf("ordinary tree: %v, %d entries", err, st.Entries)
	}
}

// An xz stream of 1.5 KiB whose header asks for a 1.5 GiB dictionary
// (xz --lzma2=dict=1536MiB) is refused before the decoder allocates it.
func TestXZDictionaryBomb(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/dict-1536MiB.tar.xz")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = extract(t, data, archive.Options{})
	if !errors.Is(err, archive.ErrRefused) || !strings.Contains(err.Error(), "1536 MiB dictionary") {
		t.Fatalf("err = %v, want a refusal of the dictionary", err)
	}
}
