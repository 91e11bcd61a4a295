package chunks

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/artifact/archive"
)

// skelTar is a tar with what a skeleton must follow: empty and large
// files, a long name (PAX), a directory, a symlink, a hard link, and a
// file of the same name twice (the second one made).
func skelTar(t *testing.T) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	r := rand.New(rand.NewPCG(1, 2))
	add := func(h *tar.Header, data []byte) {
		h.ModTime, h.Size = time.Unix(1700000000, 0), int64(len(data))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	blob := func(n int) []byte {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(r.IntN(256))
		}
		return d
	}
	add(&tar.Header{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "dir/empty"}, nil)
	add(&tar.Header{Name: "dir/a"}, blob(700_001))
	add(&tar.Header{Name: "dir/" + strings.Repeat("long", 40)}, blob(1234))
	add(&tar.Header{Name: "dir/link", Typeflag: tar.TypeSymlink, Linkname: "a"}, nil)
	add(&tar.Header{Name: "dir/hard", Typeflag: tar.TypeLink, Linkname: "dir/a"}, nil)
	add(&tar.Header{Name: "dir/twice"}, blob(600_000))
	add(&tar.Header{Name: "dir/b", PAXRecords: map[string]string{"comment": "x"}}, blob(1_500_000))
	add(&tar.Header{Name: "dir/twice"}, blob(5000))
	tw.Close()
	return b.Bytes()
}

// The skeleton of a tar and the files it made give back every byte of
// the tar, but for a file replaced by a later entry of the same name:
// the chunks holding it are not offered.
func TestSkeletonGivesBackTheTar(t *testing.T) {
	data := skelTar(t)
	idx := testIndex(data, 600<<10, 700<<10, 800<<10, len(data)-2100<<10)
	c := &Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1 << 20}
	dir := t.TempDir()
	skel := c.Skeleton()
	files := NewFiles("r", "", idx)
	w := &oddWriter{w: skel}
	if _, err := archive.Extract(context.Background(), bytes.NewReader(data), dir, archive.Options{Format: archive.Tar, Tee: w, Made: files.Made}); err != nil {
		t.Fatal(err)
	}
	if !skel.Commit("r.skel") {
		t.Fatal("no skeleton")
	}
	files.Skel, files.SkelSize, files.Holes = "r.skel", skel.Size(), skel.Holes
	if n := len(files.Holes); n != 5 {
		t.Fatalf("%d holes, want the 5 regular files with content", n)
	}
	if skel.Size() > 16<<10 {
		t.Fatalf("a skeleton of %d bytes", skel.Size())
	}
	b, err := c.NewBacking(files, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var off int64
	for i, ch := range idx.Chunks {
		want := data[off : off+ch.Size]
		off += ch.Size
		// The first dir/twice (600,000 bytes from 706,560) was
		// replaced: chunk 1 holds it.
		replaced := i == 1
		if b.Has(ch) == replaced {
			t.Fatalf("chunk %d offered: %v", i, !replaced)
		}
		if replaced {
			continue
		}
		got := make([]byte, ch.Size)
		if err := b.ReadChunk(ch, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("chunk %d read back wrong: %v", i, err)
		}
	}
	// A file changed in place: read back, its bytes differ (the stream
	// fetches that chunk instead).
	os.WriteFile(filepath.Join(dir, "dir/b"), make([]byte, 1_500_000), 0o644)
	got := make([]byte, idx.Chunks[3].Size)
	b.ReadChunk(idx.Chunks[3], got)
	if bytes.Equal(got, data[2100<<10:]) {
		t.Fatal("the change was not read")
	}
}

// A tar the skeleton cannot follow, or headers over the bound, leave
// nothing.
func TestSkeletonStops(t *testing.T) {
	data := skelTar(t)
	for name, c := range map[string]*Cache{
		"bound":   {Dir: filepath.Join(t.TempDir(), "chunks"), Max: 2000},
		"garbage": {Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1 << 20},
	} {
		s := c.Skeleton()
		if name == "garbage" {
			bad := append([]byte(nil), data...)
			copy(bad[124:136], "not a number")
			s.Write(bad)
		} else {
			s.Write(data)
		}
		if s.Commit("r.skel") {
			t.Fatalf("%s: a skeleton was kept", name)
		}
		if ents, _ := os.ReadDir(c.Dir); len(ents) != 0 {
			t.Fatalf("%s: %d files left", name, len(ents))
		}
	}
}

// oddWriter writes in pieces of changing sizes.
type oddWriter struct {
	w *Skeleton
	i int
}

func (o *oddWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), []int{1, 511, 4096, 100_000, 7}[o.i%5])
		o.i++
		o.w.Write(p[:k])
		p = p[k:]
	}
	return n, nil
}

// A stream backed by a release whose files are trusted by their identity
// gives back the tar without reading or hashing them, and the skeleton it
// tees is the one it was read from; a file written to since, with its
// modification time put back, is not trusted: its chunk is read back,
// found wrong, and fetched.
func TestStreamTrustsFilesByIdentity(t *testing.T) {
	data := skelTar(t)
	idx := testIndex(data, 600<<10, 700<<10, 800<<10, len(data)-2100<<10)
	c := &Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1 << 20}
	dir := t.TempDir()
	skel := c.Skeleton()
	files := NewFiles("r", "", idx)
	if _, err := archive.Extract(context.Background(), bytes.NewReader(data), dir, archive.Options{Format: archive.Tar, Tee: skel, Made: files.Made}); err != nil {
		t.Fatal(err)
	}
	if !skel.Commit("r.skel") {
		t.Fatal("no skeleton")
	}
	files.Skel, files.SkelSize, files.Holes, files.SkelSHA256 = "r.skel", skel.Size(), skel.Holes, skel.SHA256()
	stream := func() (*Stream, *Skeleton, []byte) {
		b, err := c.NewBacking(files, dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		var offs []int64
		var off int64
		for _, ch := range idx.Chunks {
			offs = append(offs, off)
			off += ch.Size
		}
		tee := c.Skeleton()
		s := c.StreamWith(idx, StreamOptions{Backing: b, Tee: tee, Fetch: func(ch Chunk) error {
			for i, x := range idx.Chunks {
				if x == ch {
					return os.WriteFile(c.path(ch.SHA256), data[offs[i]:offs[i]+ch.Size], 0o600)
				}
			}
			return os.ErrNotExist
		}})
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		return s, tee, got
	}
	s, tee, got := stream()
	if !bytes.Equal(got, data) {
		t.Fatal("the tar given back is not the tar")
	}
	// Chunk 1 holds the first dir/twice, replaced: fetched; the 3 others
	// are the release's, 2 trusted: dir/a, in chunk 0, got a hard link
	// (dir/hard) after it was made, which changed its change time: it is
	// read back and hashed.
	if s.Backed != 3 || s.Trusted != 2 {
		t.Fatalf("%d chunks from the release, %d trusted", s.Backed, s.Trusted)
	}
	if tee.Size() != skel.Size() || tee.SHA256() != skel.SHA256() {
		t.Fatal("the skeleton teed is not the one read")
	}
	tee.Close()

	p := filepath.Join(dir, "dir/b")
	fi, _ := os.Stat(p)
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte("written"), 600_000)
	f.Close()
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	s, tee, got = stream()
	tee.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("the tar given back is not the tar: a file written to was trusted")
	}
	// dir/b lies in chunks 2 and 3: chunk 2, which holds the change, is
	// fetched, chunk 3 read back and hashed.
	if s.Trusted != 0 || s.Backed != 2 {
		t.Fatalf("%d chunks from the release, %d trusted", s.Backed, s.Trusted)
	}
}
