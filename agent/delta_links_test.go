package agent_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/dropshipd/dropship/agent"
)

// part is the content publishChunked gives bin/partNN.
func part(i, changed int) []byte {
	b := make([]byte, 1<<20)
	var seed [32]byte
	seed[0] = byte(i)
	if i == 3 {
		seed[1] = byte(changed)
	}
	rand.NewChaCha8(seed).Read(b)
	return b
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() {
		t.Fatalf("%s is not a regular file: %v", p, fi.Mode())
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// releasePath is name in the release the destination points at.
func (e *env) releasePath(name string) string {
	e.t.Helper()
	dir, err := filepath.EvalSymlinks(e.dest)
	if err != nil {
		e.t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// checkParts fails unless the current release holds every part of
// version changed, byte for byte.
func (e *env) checkParts(changed int) {
	e.t.Helper()
	for i := range 8 {
		b, err := os.ReadFile(filepath.Join(e.dest, "bin", fmt.Sprintf("part%02d", i)))
		if err != nil || !bytes.Equal(b, part(i, changed)) {
			e.t.Fatalf("bin/part%02d is not the release's (%v)", i, err)
		}
	}
}

func lastDelta(t *testing.T, logs *syncBuf) map[string]any {
	t.Helper()
	got := logs.records("downloaded and verified")
	if len(got) == 0 || got[len(got)-1]["format"] != "chunks" {
		t.Fatalf("not a delta: %v", got)
	}
	return got[len(got)-1]
}

func linked(d map[string]any) float64 {
	n, _ := d["linked_files"].(float64)
	return n
}

// A delta links the files that did not change from the current release
// instead of writing them; a linked file outlives the pruning of the
// release it was first written in, and the next delta links it again.
func TestDeltaLinksUnchangedFiles(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", "keep_releases = 2"))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	first := e.releasePath("bin/part06")
	ino := inode(t, first)

	e.publishChunked("v2", 1)
	e.check(r, agent.ResultInstalled)
	d := lastDelta(t, logs)
	if n := linked(d); n < 3 {
		t.Fatalf("the delta linked %v files of 9, 6 of them unchanged in their chunks", n)
	}
	if got := inode(t, e.releasePath("bin/part06")); got != ino {
		t.Fatal("bin/part06, unchanged, was written again")
	}
	e.checkParts(1)

	// v3: v1's release is pruned (keep_releases = 2); the file it shared
	// with v2 and v3 stays, whole.
	e.publishChunked("v3", 2)
	e.check(r, agent.ResultInstalled)
	if n := linked(lastDelta(t, logs)); n < 3 {
		t.Fatalf("the second delta linked %v files", n)
	}
	if _, err := os.Lstat(first); err == nil {
		t.Fatal("v1's release was not pruned")
	}
	if got := inode(t, e.releasePath("bin/part06")); got != ino {
		t.Fatal("bin/part06 was written again")
	}
	e.checkParts(2)
	if e.current() != "v3" {
		t.Fatalf("installed %q", e.current())
	}

	// And after the pruning, the next delta links from v3 still.
	e.publishChunked("v4", 3)
	e.check(r, agent.ResultInstalled)
	if n := linked(lastDelta(t, logs)); n < 3 {
		t.Fatalf("the delta after a pruning linked %v files", n)
	}
	e.checkParts(3)
}

// A file of the current release that the application changed in place
// (same size), or replaced by a symlink, is not linked into the next
// release: the new release has the index's bytes, and the current one
// keeps what the application wrote.
func TestDeltaDoesNotLinkFilesChangedInTheRelease(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	edited := e.releasePath("bin/part06")
	f, err := os.OpenFile(edited, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("written by the application"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	swapped := e.releasePath("bin/part05")
	os.Remove(swapped)
	if err := os.Symlink("part06", swapped); err != nil {
		t.Fatal(err)
	}

	e.publishChunked("v2", 1)
	e.check(r, agent.ResultInstalled)
	if n := linked(lastDelta(t, logs)); n < 1 {
		t.Fatalf("the delta linked %v files: the others were unchanged", n)
	}
	if inode(t, e.releasePath("bin/part06")) == inode(t, edited) {
		t.Fatal("bin/part06, changed in place, was linked into the new release")
	}
	inode(t, e.releasePath("bin/part05")) // a regular file, not the link
	e.checkParts(1)
	if b, _ := os.ReadFile(edited); bytes.Equal(b, part(6, 0)) {
		t.Fatal("the old release's file lost what the application wrote")
	}
}

// A chunk of the cache that is not what its name says is caught by the
// tar's SHA-256 though the files it holds are linked, not read: nothing
// of the delta is installed, the archive is.
func TestDeltaCorruptCachedChunkRefusedWithLinks(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	cache := filepath.Join(r.Dir(), "chunks")
	ents, err := os.ReadDir(cache)
	if err != nil || len(ents) == 0 {
		t.Fatalf("no cache: %v", err)
	}
	for _, ent := range ents {
		p := filepath.Join(cache, ent.Name())
		b, _ := os.ReadFile(p)
		b[len(b)/2] ^= 1
		os.WriteFile(p, b, 0o600)
	}

	e.publishChunked("v2", 1)
	e.check(r, agent.ResultInstalled)
	if failed := logs.records("delta failed; fetching the archive"); len(failed) != 1 {
		t.Fatalf("the corrupt chunks were not refused: %v", failed)
	}
	if got := logs.records("downloaded and verified"); got[len(got)-1]["format"] != "tar.zst" {
		t.Fatalf("not installed from the archive: %v", got)
	}
	e.checkParts(1)
	// The cache was emptied, then filled again from the archive: the
	// next delta is whole again.
	e.publishChunked("v3", 2)
	e.check(r, agent.ResultInstalled)
	lastDelta(t, logs)
	e.checkParts(2)
	if _, err := os.Stat(filepath.Join(r.Dir(), "chunks.files")); err != nil {
		t.Fatal(err)
	}
}

// Without chunk_links = true (the default), a delta writes every file, as
// an archive install: a hook or the application writing over a file in
// place must never reach the release kept for rollback.
func TestDeltaChunkLinksOff(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	ino := inode(t, e.releasePath("bin/part06"))
	e.publishChunked("v2", 1)
	e.check(r, agent.ResultInstalled)
	if n := linked(lastDelta(t, logs)); n != 0 {
		t.Fatalf("the delta linked %v files", n)
	}
	if inode(t, e.releasePath("bin/part06")) == ino {
		t.Fatal("bin/part06 was linked")
	}
	e.checkParts(1)
}
