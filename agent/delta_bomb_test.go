package agent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact/chunks"
)

// An index (unsigned: any bucket writer's) that makes its tar larger than
// the unpack limits allow, out of chunks that compress to nothing, is not
// fetched into the cache: the archive's max_size and max_ratio bound what
// a delta writes to disk as they bound what an archive unpacks.
func TestDeltaIndexOverMaxSizeFetchesNothing(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	const maxSize = 32 << 20
	r, logs := e.loggedRunner(e.configWithArtifact("max_size = 33554432", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	e.publishChunked("v2", 1)

	// The index of v2, with 8 MiB chunks of almost nothing added.
	b, err := os.ReadFile(e.store + chunks.IndexSuffix)
	if err != nil {
		t.Fatal(err)
	}
	var idx chunks.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	root := filepath.Dir(e.store)
	var hostile []string
	for i := 0; idx.Tar.Size <= maxSize; i++ {
		data := make([]byte, chunks.MaxChunk)
		data[0], data[1] = 'x', byte(i)
		stored := enc.EncodeAll(data, nil)
		sum := sha256hex(data)
		p := filepath.Join(root, filepath.FromSlash(chunks.Key(sum)))
		if err := os.WriteFile(p, stored, 0o644); err != nil {
			t.Fatal(err)
		}
		idx.Chunks = append(idx.Chunks, chunks.Chunk{SHA256: sum, Size: int64(len(data)), Stored: int64(len(stored))})
		idx.Tar.Size += int64(len(data))
		hostile = append(hostile, sum)
	}
	b, _ = json.Marshal(idx)
	if err := os.WriteFile(e.store+chunks.IndexSuffix, b, 0o644); err != nil {
		t.Fatal(err)
	}

	e.check(r, agent.ResultInstalled)
	if e.current() != "v2" {
		t.Fatalf("running %q", e.current())
	}
	for _, sum := range hostile {
		if _, err := os.Stat(filepath.Join(r.Dir(), "chunks", sum)); err == nil {
			t.Fatalf("a chunk of a tar over max_size was fetched into the cache (%d bytes of tar, max_size %d)", idx.Tar.Size, maxSize)
		}
	}
	if failed := logs.records("delta failed; fetching the archive"); len(failed) != 0 {
		t.Fatalf("the chunks of a tar over max_size were fetched (%d bytes of tar, max_size %d): %v", idx.Tar.Size, maxSize, failed)
	}
	if got := logs.records("downloaded and verified"); got[len(got)-1]["format"] != "tar.zst" {
		t.Fatalf("v2 was not installed from its archive: %v", got)
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
