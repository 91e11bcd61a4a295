package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/artifact/file"
)

// records returns the log records with msg, decoded.
func (s *syncBuf) records(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// publishChunked writes a .tar.zst release of 8 made-up 1 MiB files and
// VERSION, its chunks and its index, as `dropship publish` does. changed
// changes the content of bin/part03.
func (e *env) publishChunked(v string, changed int) {
	e.t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	add := func(name string, b []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1700000000, 0)})
		tw.Write(b)
	}
	add("VERSION", []byte(v))
	for i := range 8 {
		b := make([]byte, 1<<20)
		var seed [32]byte
		seed[0] = byte(i)
		if i == 3 {
			seed[1] = byte(changed)
		}
		rand.NewChaCha8(seed).Read(b)
		add(fmt.Sprintf("bin/part%02d", i), b)
	}
	tw.Close()
	enc, _ := zstd.NewWriter(nil)
	p := filepath.Join(e.t.TempDir(), "app.tar.zst")
	os.WriteFile(p, enc.EncodeAll(tb.Bytes(), nil), 0o644)
	dir, key := filepath.Dir(e.store), filepath.Base(e.store)
	if _, err := chunks.Publish(context.Background(), file.Store{}, dir, key, p, nil); err != nil {
		e.t.Fatal(err)
	}
	if _, err := (file.Store{}).Publish(context.Background(), dir, key, p, 0); err != nil {
		e.t.Fatal(err)
	}
	later := time.Now().Add(time.Duration(len(v)) * time.Millisecond)
	os.Chtimes(e.store, later, later)
}

func (e *env) loggedRunner(cfg *agent.Config) (*agent.Runner, *syncBuf) {
	e.t.Helper()
	logs := &syncBuf{}
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		e.t.Fatal(err)
	}
	return r, logs
}

// The first install fetches the archive and fills the cache from it; the
// next, with one file of nine changed, fetches only the chunks that
// changed and installs the same release the archive would have.
func TestDeltaInstallFetchesOnlyChangedChunks(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.config(""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	if got := logs.records("downloaded and verified"); len(got) != 1 || got[0]["format"] != "tar.zst" {
		t.Fatalf("first install: %v", got)
	}
	// The cache keeps the tar's headers, not its files' content (the
	// release holds that): a few KiB for 8 MiB.
	if filled := logs.records("chunk cache filled"); len(filled) != 1 || filled[0]["files"].(float64) != 9 ||
		filled[0]["skeleton_bytes"].(float64) == 0 || filled[0]["skeleton_bytes"].(float64) > 16<<10 {
		t.Fatalf("the archive install did not fill the cache: %v", filled)
	}

	e.publishChunked("v2", 1)
	out := e.check(r, agent.ResultInstalled)
	got := logs.records("downloaded and verified")
	if len(got) != 2 || got[1]["format"] != "chunks" || got[1]["checksum"] != out.Checksum {
		t.Fatalf("second install was not a delta: %v", got)
	}
	if fetched, whole := got[1]["fetched_bytes"].(float64), got[1]["archive_bytes"].(float64); fetched <= 0 || fetched > whole/2 {
		t.Fatalf("the delta fetched %v bytes of a %v-byte archive", fetched, whole)
	}
	if got[1]["release_chunks"].(float64) == 0 {
		t.Fatalf("no chunk was read back from the current release: %v", got[1])
	}
	if e.current() != "v2" {
		t.Fatalf("installed %q", e.current())
	}
	b, _ := os.ReadFile(filepath.Join(e.dest, "bin", "part03"))
	want := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{3, 1}).Read(want)
	if !bytes.Equal(b, want) {
		t.Fatal("bin/part03 is not v2's")
	}
	// The state records the archive's checksums, as for an archive install.
	st := e.state_(r)
	if rel := st.Releases[len(st.Releases)-1]; st.Release != rel.ID || rel.Checksum != out.Checksum || rel.SHA256 == "" {
		t.Fatalf("state: %+v", rel)
	}
}

// A chunk the store holds corrupt is fetched twice, refused, and never
// installed: the archive is fetched and installed instead.
func TestDeltaCorruptStoredChunkFallsBackToTheArchive(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.config(""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	old := map[string]bool{}
	var idx chunks.Index
	b, _ := os.ReadFile(e.store + chunks.IndexSuffix)
	json.Unmarshal(b, &idx)
	for _, c := range idx.Chunks {
		old[c.SHA256] = true
	}
	e.publishChunked("v2", 1)
	b, _ = os.ReadFile(e.store + chunks.IndexSuffix)
	json.Unmarshal(b, &idx)
	corrupted := 0
	for _, c := range idx.Chunks {
		if !old[c.SHA256] {
			p := filepath.Join(filepath.Dir(e.store), chunks.Key(c.SHA256))
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 1
			os.WriteFile(p, b, 0o644)
			corrupted++
		}
	}
	if corrupted == 0 {
		t.Fatal("v2 has no chunk of its own")
	}

	e.check(r, agent.ResultInstalled)
	if failed := logs.records("delta failed; fetching the archive"); len(failed) != 1 || !strings.Contains(failed[0]["error"].(string), "failed verification") {
		t.Fatalf("the corrupt chunk was not refused: %v", failed)
	}
	if got := logs.records("downloaded and verified"); got[len(got)-1]["format"] != "tar.zst" {
		t.Fatalf("not installed from the archive: %v", got)
	}
	if e.current() != "v2" {
		t.Fatalf("installed %q", e.current())
	}
}

// chunk_cache bounds the cache; 0 turns deltas off.
func TestDeltaCacheBounded(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, _ := e.loggedRunner(e.configWithArtifact("chunk_cache = 3000000", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	c := chunks.Cache{Dir: filepath.Join(r.Dir(), "chunks")}
	if n := c.Size(); n == 0 || n > 3000000 {
		t.Fatalf("the cache holds %d bytes, bound 3000000", n)
	}

	e2 := newEnv(t)
	e2.store = filepath.Join(e2.dir, "store", "app.tar.zst")
	r2, logs := e2.loggedRunner(e2.configWithArtifact("chunk_cache = 0", ""))
	e2.publishChunked("v1", 0)
	e2.check(r2, agent.ResultInstalled)
	if _, err := os.Stat(filepath.Join(r2.Dir(), "chunks")); err == nil || len(logs.records("chunk cache filled")) != 0 {
		t.Fatal("chunk_cache = 0 kept a cache")
	}
}
