package chunks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
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
