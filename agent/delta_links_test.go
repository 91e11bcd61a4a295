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
	"github.com/dropshipd/dropship/artifact/chunks"
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

// The cache keeps the skeleton of the current release's tar: a byte of
// it changed costs the chunk it lies in, fetched from the store, and
// the new release is still exactly the index's; one that lost bytes is
// not used, and the archive is fetched.
func TestDeltaDamagedSkeleton(t *testing.T) {
	for _, links := range []bool{true, false} {
		t.Run(fmt.Sprintf("links=%v", links), func(t *testing.T) {
			e := newEnv(t)
			e.store = filepath.Join(e.dir, "store", "app.tar.zst")
			r, logs := e.loggedRunner(e.configWithArtifact(fmt.Sprintf("chunk_links = %v", links), ""))
			e.publishChunked("v1", 0)
			e.check(r, agent.ResultInstalled)
			skel := skeleton(t, r)
			b, _ := os.ReadFile(skel)
			b[len(b)-100] ^= 1 // in the end-of-archive blocks: the last chunk, which v2 shares
			os.WriteFile(skel, b, 0o600)

			e.publishChunked("v2", 1)
			e.check(r, agent.ResultInstalled)
			d := lastDelta(t, logs)
			if n := len(logs.records("chunk not read back from the current release; fetching it")); n != 1 {
				t.Fatalf("%d chunks fetched in place of the release's", n)
			}
			e.checkParts(1)
			if d["fetched_chunks"].(float64) < 2 {
				t.Fatalf("the damaged chunk was not fetched: %v", d)
			}

			skel = skeleton(t, r)
			os.Truncate(skel, 1000)
			e.publishChunked("v3", 2)
			e.check(r, agent.ResultInstalled)
			if got := logs.records("downloaded and verified"); got[len(got)-1]["format"] != "tar.zst" {
				t.Fatalf("not installed from the archive: %v", got[len(got)-1])
			}
			e.checkParts(2)
		})
	}
}

// skeleton is the skeleton of the release last installed, in the
// runner's chunk cache, which holds that of the release before it too
// and nothing else.
func skeleton(t *testing.T, r *agent.Runner) string {
	t.Helper()
	f, err := chunks.LoadFiles(filepath.Join(r.Dir(), "chunks.files"))
	if err != nil || f.Skel == "" {
		t.Fatalf("no skeleton recorded: %v", err)
	}
	m, _ := filepath.Glob(filepath.Join(r.Dir(), "chunks", "*.skel"))
	ents, _ := os.ReadDir(filepath.Join(r.Dir(), "chunks"))
	if len(m) > 2 || len(ents) != len(m) {
		t.Fatalf("the cache holds %d entries, %d skeletons", len(ents), len(m))
	}
	return filepath.Join(r.Dir(), "chunks", f.Skel)
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

// The cache is backed by the current release: after a restart, a delta
// reads the chunks that did not change back from the release's files,
// and those of a file the application wrote to in place are fetched
// instead, with links or without: the new release is exactly the
// index's, and the current one keeps what the application wrote.
func TestDeltaAfterRestartFetchesWhatTheApplicationWrote(t *testing.T) {
	for _, links := range []bool{true, false} {
		t.Run(fmt.Sprintf("links=%v", links), func(t *testing.T) {
			e := newEnv(t)
			e.store = filepath.Join(e.dir, "store", "app.tar.zst")
			cfg := e.configWithArtifact(fmt.Sprintf("chunk_links = %v", links), "")
			r, _ := e.loggedRunner(cfg)
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

			r, logs := e.loggedRunner(cfg) // a new process
			e.publishChunked("v2", 1)
			e.check(r, agent.ResultInstalled)
			d := lastDelta(t, logs)
			if d["release_chunks"].(float64) < 4 {
				t.Fatalf("%v chunks read back from the current release", d["release_chunks"])
			}
			if n := len(logs.records("chunk not read back from the current release; fetching it")); n < 1 {
				t.Fatal("the chunks of the file written in place were not fetched")
			}
			if n := linked(d); links && n < 3 || !links && n != 0 {
				t.Fatalf("%v files linked", n)
			}
			e.checkParts(1)
			if b, _ := os.ReadFile(edited); bytes.Equal(b, part(6, 0)) {
				t.Fatal("the old release's file lost what the application wrote")
			}
		})
	}
}

// A file of the current release written in place with its modification
// time put back looks unchanged to the link's checks; its bytes read back
// do not match the chunk's, so it is not linked into the new release:
// the delta fails and the archive installs exactly the new release.
func TestDeltaDoesNotLinkAFileEditedWithItsTimePutBack(t *testing.T) {
	e := newEnv(t)
	e.store = filepath.Join(e.dir, "store", "app.tar.zst")
	r, logs := e.loggedRunner(e.configWithArtifact("chunk_links = true", ""))
	e.publishChunked("v1", 0)
	e.check(r, agent.ResultInstalled)
	for _, i := range []int{1, 5, 6, 7} {
		p := e.releasePath(fmt.Sprintf("bin/part%02d", i))
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("written by the application"), 300<<10)
		f.Close()
		if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
	}

	e.publishChunked("v2", 1)
	e.check(r, agent.ResultInstalled)
	if failed := logs.records("delta failed; fetching the archive"); len(failed) != 1 {
		t.Fatalf("the delta did not fail: %v", failed)
	}
	if got := logs.records("downloaded and verified"); got[len(got)-1]["format"] != "tar.zst" {
		t.Fatalf("not installed from the archive: %v", got[len(got)-1])
	}
	e.checkParts(1)
}
