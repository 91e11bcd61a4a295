package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// twin is the content of a.bin and b.bin: the same 6 MiB, so the chunks
// inside b.bin are chunks of a.bin too.
func twin() []byte {
	b := make([]byte, 6<<20)
	rand.NewChaCha8([32]byte{42}).Read(b)
	return b
}

// publishTwins publishes a release of VERSION, a.bin and b.bin (the
// same bytes) and z.bin (changed with v), with its index, and returns
// the index and the offset of b.bin's content in the tar.
func (e *env) publishTwins(v string) (*chunks.Index, int64) {
	return e.publishTwinsAt(v, time.Unix(1700000000, 0))
}

// publishTwinsAt is publishTwins with b.bin's modification time bTime.
func (e *env) publishTwinsAt(v string, bTime time.Time) (*chunks.Index, int64) {
	e.t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	var bOff int64
	add := func(name string, b []byte) {
		mtime := time.Unix(1700000000, 0)
		if name == "b.bin" {
			mtime = bTime
		}
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: mtime})
		tw.Flush()
		if name == "b.bin" {
			bOff = int64(tb.Len())
		}
		tw.Write(b)
	}
	add("VERSION", []byte("1"))
	add("a.bin", twin())
	add("b.bin", twin())
	z := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{7, byte(len(v))}).Read(z)
	add("z.bin", z)
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
	raw, err := os.ReadFile(e.store + chunks.IndexSuffix)
	if err != nil {
		e.t.Fatal(err)
	}
	var idx chunks.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		e.t.Fatal(err)
	}
	return &idx, bOff
}

// A file of the current release edited in place with its modification
// time put back, whose chunks are chunks of another file of the release
// too (a copy of it, unchanged), is not linked into the new release: the
// chunks read back from the copy say nothing of its bytes.
func TestDeltaDoesNotLinkAnEditedCopyOfAnotherFile(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	idx, bOff := e.publishTwins("v1")
	e.check(r, agent.ResultInstalled)

	// A chunk wholly inside b.bin that a.bin holds first.
	first := map[string]int64{}
	var off, at int64 = 0, -1
	for _, ch := range idx.Chunks {
		if _, ok := first[ch.SHA256]; !ok {
			first[ch.SHA256] = off
		} else if off >= bOff && off+ch.Size <= bOff+6<<20 && first[ch.SHA256] < bOff {
			at = off - bOff + ch.Size/2
			break
		}
		off += ch.Size
	}
	if at < 0 {
		t.Fatal("no chunk of b.bin is a chunk of a.bin too")
	}
	p := e.releasePath("b.bin")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("written by the application"), at)
	f.Close()
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}

	e.publishTwins("v22")
	e.check(r, agent.ResultInstalled)
	for _, name := range []string{"a.bin", "b.bin"} {
		if b, _ := os.ReadFile(filepath.Join(e.dest, name)); !bytes.Equal(b, twin()) {
			t.Fatalf("%s of the new release is not the index's (delta: %v)", name, logs.records("downloaded and verified"))
		}
	}
}

// A file system mounted over the current release (a FUSE one its owner
// mounted could give its files any identity, and stall any read) is not
// read back: the delta fetches what it needs from the store.
func TestDeltaDoesNotReadAReleaseMountedOver(t *testing.T) {
	testutil.RequireRoot(t, "mounting takes root")
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	rel, err := filepath.EvalSymlinks(e.dest)
	if err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(t.TempDir(), "saved")
	if err := os.Rename(rel, saved); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(rel, 0o755)
	if err := syscall.Mount("tmpfs", rel, "tmpfs", 0, "size=64m"); err != nil {
		testutil.Require(t, "a tmpfs mount", err)
	}
	t.Cleanup(func() { syscall.Unmount(rel, syscall.MNT_DETACH) })
	if out, err := exec.Command("cp", "-a", saved+"/.", rel).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	e.publishChunked("v2", 1)
	e.check(r, agent.ResultInstalled)
	for _, d := range logs.records("downloaded and verified") {
		if n, _ := d["release_chunks"].(float64); n > 0 || linked(d) > 0 {
			t.Fatalf("the delta read %v chunks back from, and linked %v files of, a file system mounted over the release", n, linked(d))
		}
	}
	e.checkParts(1)
}

// A file of the new release whose content is a copy of a file the delta
// links (its chunks are that file's), but which cannot be linked itself
// (its modification time changed), is written from the file linked: the
// change time the link gave that file is the delta's own doing, not a
// write, and the delta succeeds.
func TestDeltaWritesACopyOfAFileItLinked(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	e.publishTwins("v1")
	e.check(r, agent.ResultInstalled)
	e.publishTwinsAt("v22", time.Unix(1700000100, 0))
	e.check(r, agent.ResultInstalled)
	if failed := logs.records("delta failed; fetching the archive"); len(failed) != 0 {
		t.Fatalf("the delta failed: %v", failed)
	}
	d := lastDelta(t, logs)
	// The chunks holding b.bin's header and z.bin are fetched; b.bin's
	// content, in chunks of a.bin's, is not.
	if linked(d) < 1 || d["fetched_chunks"].(float64) > 4 || d["release_chunks"].(float64) < 5 {
		t.Fatalf("a.bin not linked, or b.bin fetched: %v", d)
	}
	for _, name := range []string{"a.bin", "b.bin"} {
		if b, _ := os.ReadFile(filepath.Join(e.dest, name)); !bytes.Equal(b, twin()) {
			t.Fatalf("%s of the new release is not the index's", name)
		}
	}
}

// A file of the current release edited in place with its modification
// time put back, whose first chunk the release cannot give back whole
// (it holds the end of a file that a later entry of the same name
// replaced): that chunk is fetched, so nothing reads the file's bytes
// there, and the file is not linked.
func TestDeltaDoesNotLinkAnEditedFileInAChunkFetched(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	f := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{5}).Read(f)
	publish := func(v string) {
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		add := func(name string, b []byte) {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1700000000, 0)})
			tw.Write(b)
		}
		dup := make([]byte, 100<<10) // less than a chunk: the first holds f.bin's start too
		rand.NewChaCha8([32]byte{6}).Read(dup)
		add("dup", dup)
		add("f.bin", f)
		add("dup", []byte("the second dup"))
		z := make([]byte, 1<<20)
		rand.NewChaCha8([32]byte{7, byte(len(v))}).Read(z)
		add("z.bin", z)
		tw.Close()
		enc, _ := zstd.NewWriter(nil)
		p := filepath.Join(e.t.TempDir(), "app.tar.zst")
		os.WriteFile(p, enc.EncodeAll(tb.Bytes(), nil), 0o644)
		dir, key := filepath.Dir(e.store), filepath.Base(e.store)
		if _, err := chunks.Publish(context.Background(), file.Store{}, dir, key, p, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := (file.Store{}).Publish(context.Background(), dir, key, p, 0); err != nil {
			t.Fatal(err)
		}
		later := time.Now().Add(time.Duration(len(v)) * time.Millisecond)
		os.Chtimes(e.store, later, later)
	}
	publish("v1")
	e.check(r, agent.ResultInstalled)
	p := e.releasePath("f.bin")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt([]byte("written by the application"), 1000)
	w.Close()
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}

	publish("v22")
	e.check(r, agent.ResultInstalled)
	if b, _ := os.ReadFile(filepath.Join(e.dest, "f.bin")); !bytes.Equal(b, f) {
		t.Fatalf("f.bin of the new release is not the index's (delta: %v)", logs.records("downloaded and verified"))
	}
}
