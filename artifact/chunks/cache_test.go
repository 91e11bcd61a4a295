package chunks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func testIndex(data []byte, sizes ...int) *Index {
	idx := &Index{Format: format}
	off := 0
	for _, n := range sizes {
		s := sha256.Sum256(data[off : off+n])
		idx.Chunks = append(idx.Chunks, Chunk{SHA256: hex.EncodeToString(s[:]), Size: int64(n), Stored: int64(n)})
		off += n
	}
	s := sha256.Sum256(data)
	idx.Tar = Digest{Size: int64(len(data)), SHA256: hex.EncodeToString(s[:])}
	return idx
}

// What a Filler wrote enters the cache only when committed (the archive
// verified); a failed install leaves nothing under a chunk's name.
func TestFillerCommitsOnlyAfterVerification(t *testing.T) {
	data := make([]byte, 3000)
	rand.NewChaCha8([32]byte{1}).Read(data)
	idx := testIndex(data, 1000, 1500, 500)
	for _, commit := range []bool{false, true} {
		c := &Cache{Dir: filepath.Join(t.TempDir(), "chunks"), Max: 1 << 20}
		f := c.Filler(idx)
		for off := 0; off < len(data); off += 333 { // writes across chunk ends
			f.Write(data[off:min(off+333, len(data))])
		}
		if commit {
			f.Commit()
		}
		f.Close()
		missing, _ := c.Missing(idx, nil)
		if commit && len(missing) != 0 || !commit && len(missing) != 3 {
			t.Fatalf("commit %v: %d chunks missing", commit, len(missing))
		}
		if !commit {
			if ents, _ := os.ReadDir(c.Dir); len(ents) != 0 {
				t.Fatalf("a failed install left %d files in the cache", len(ents))
			}
			continue
		}
		var got bytes.Buffer
		s := c.Stream(idx)
		if _, err := got.ReadFrom(s); err != nil || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("reassembled %d bytes, err %v", got.Len(), err)
		}
	}
}

// A cache file whose bytes are not its name's fails the tar's check.
func TestStreamRefusesAChangedCacheFile(t *testing.T) {
	data := make([]byte, 2000)
	rand.NewChaCha8([32]byte{2}).Read(data)
	idx := testIndex(data, 1200, 800)
	c := &Cache{Dir: t.TempDir(), Max: 1 << 20}
	for i, off := range []int{0, 1200} {
		b := append([]byte(nil), data[off:off+int(idx.Chunks[i].Size)]...)
		if i == 1 {
			b[7] ^= 1
		}
		os.WriteFile(c.path(idx.Chunks[i].SHA256), b, 0o600)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(c.Stream(idx)); err == nil {
		t.Fatal("a changed cache file was taken")
	}
}

// Keep leaves only the index's chunks, within the bound.
func TestKeepBounds(t *testing.T) {
	data := make([]byte, 4000)
	rand.NewChaCha8([32]byte{3}).Read(data)
	idx := testIndex(data[:3000], 1000, 1000, 1000)
	c := &Cache{Dir: t.TempDir(), Max: 2500}
	os.WriteFile(filepath.Join(c.Dir, "stale"), data[:4000], 0o600)
	for i, ch := range idx.Chunks {
		os.WriteFile(c.path(ch.SHA256), data[i*1000:(i+1)*1000], 0o600)
	}
	if err := c.Keep(idx); err != nil {
		t.Fatal(err)
	}
	if n := c.Size(); n > 2500 || n < 2000 {
		t.Fatalf("%d bytes kept, bound 2500", n)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "stale")); err == nil {
		t.Fatal("a file of no chunk of the index stayed")
	}
}

// The stream reads in blocks (mapped or read), skips forward by Seek and
// hands the rest over by WriteTo: the bytes are the tar's wherever the
// reads, skips and block ends fall, and what is skipped is hashed too.
func TestStreamSeekAndWriteTo(t *testing.T) {
	for _, mapped := range []bool{true, false} {
		t.Run(fmt.Sprintf("mapped=%v", mapped), func(t *testing.T) {
			defer func(m bool) { mapBlocks = m }(mapBlocks)
			mapBlocks = mapped
			testStreamSeekAndWriteTo(t)
		})
	}
}

func testStreamSeekAndWriteTo(t *testing.T) {
	data := make([]byte, (1300+700+1024)<<10)
	rand.NewChaCha8([32]byte{4}).Read(data)
	idx := testIndex(data, 1300<<10, 700<<10, 1<<20)
	write := func(c *Cache, change int) {
		off := 0
		for i, ch := range idx.Chunks {
			b := append([]byte(nil), data[off:off+int(ch.Size)]...)
			if i == change {
				b[len(b)-3] ^= 1
			}
			os.WriteFile(c.path(ch.SHA256), b, 0o600)
			off += int(ch.Size)
		}
	}
	c := &Cache{Dir: t.TempDir(), Max: 1 << 30}
	write(c, -1)
	s := c.Stream(idx).(*Stream)
	var got bytes.Buffer
	small := make([]byte, 512)
	pos := 0
	for _, skip := range []int{0, 100, 600 << 10, 1, 1 << 20} {
		n, err := s.Read(small)
		if err != nil {
			t.Fatal(err)
		}
		got.Write(small[:n])
		pos += n
		p, err := s.Seek(int64(skip), 1)
		if err != nil || p != int64(pos+skip) {
			t.Fatalf("seek %d from %d: %d, %v", skip, pos, p, err)
		}
		got.Write(data[pos : pos+skip]) // what was skipped, as the tar has it
		pos += skip
	}
	if _, err := s.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("the stream's bytes are not the tar's")
	}

	// A byte changed in a chunk the reader skips over entirely.
	c2 := &Cache{Dir: t.TempDir(), Max: 1 << 30}
	write(c2, 1)
	s2 := c2.Stream(idx).(*Stream)
	s2.Read(small)
	// Checked before any of its bytes is handed over: the skip stops.
	_, err := s2.Seek(2<<20, 1)
	if err == nil {
		_, err = s2.WriteTo(io.Discard)
	}
	if err == nil {
		t.Fatal("a changed chunk that was skipped was not caught")
	}
	s2.Close()

	// A chunk file shorter than its size.
	os.Truncate(c.path(idx.Chunks[2].SHA256), 1000)
	s3 := c.Stream(idx)
	if _, err := io.Copy(io.Discard, s3); err == nil {
		t.Fatal("a short chunk file was taken")
	}
	s3.Close()
}
