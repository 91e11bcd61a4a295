package chunks

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
)

// A record spooled as the files are made is saved and read back the same
// as one held in memory, its head alone too; Check reads it back from
// the file and finds a file written since; a record of the format before
// (one gob value) is still read.
func TestFilesSpooledRecord(t *testing.T) {
	data := skelTar(t)
	idx := testIndex(data, 600<<10, 700<<10, 800<<10, len(data)-2100<<10)
	state := t.TempDir()
	mem, spooled := NewFiles("r", "o", idx), NewFilesSpooled("r", "o", idx, filepath.Join(state, "files.spool"))
	made := func(e *archive.Entry, st archive.FileStat) { mem.Made(e, st); spooled.Made(e, st) }
	dir := t.TempDir()
	if _, err := archive.Extract(context.Background(), bytes.NewReader(data), dir, archive.Options{Format: archive.Tar, Made: made}); err != nil {
		t.Fatal(err)
	}
	if spooled.Files != nil || spooled.Len() < len(mem.Files) || len(mem.Files) == 0 {
		t.Fatalf("spooled: %d files held, %d recorded; in memory %d", len(spooled.Files), spooled.Len(), len(mem.Files))
	}
	for _, f := range []*Files{mem, spooled} {
		f.Skel, f.SkelSize, f.SkelSHA256, f.Holes = "r.skel", 1234, "abc", []Hole{{1, 2}, {5, 6}}
	}
	path := filepath.Join(state, "chunks.files")
	if err := spooled.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "files.spool")); !os.IsNotExist(err) {
		t.Fatalf("the spool is left: %v", err)
	}
	got, err := LoadFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	want := *mem
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("read back:\n%+v\nwant\n%+v", *got, want)
	}
	if h, err := LoadFilesHead(path); err != nil || h.Release != "r" || h.Skel != "r.skel" || h.Files != nil {
		t.Fatalf("head: %+v, %v", h, err)
	}
	if err := mem.Save(path + ".mem"); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadFiles(path + ".mem"); err != nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("saved from memory, read back: %+v, %v", got, err)
	}
	if err := spooled.Check(dir); err != nil {
		t.Fatalf("check of the release as made: %v", err)
	}
	var name string
	for n := range mem.Files {
		name = n
		break
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte("written since"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := spooled.Check(dir); err == nil || !strings.Contains(err.Error(), name) {
		t.Fatalf("check after %s was written: %v", name, err)
	}
	other := NewFilesSpooled("s", "o", idx, filepath.Join(state, "files.spool"))
	other.Save(filepath.Join(state, "other"))
	os.Rename(filepath.Join(state, "other"), path)
	if err := spooled.Check(dir); err == nil {
		t.Fatal("checked against the record of another release")
	}

	// The format before: one gob value.
	old := filepath.Join(state, "old.files")
	fh, _ := os.Create(old)
	w := bufio.NewWriter(fh)
	if err := gob.NewEncoder(w).Encode(mem); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	fh.Close()
	if got, err := LoadFiles(old); err != nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("a record of the format before: %+v, %v", got, err)
	}
	if h, err := LoadFilesHead(old); err != nil || h.Release != "r" || h.Skel != "r.skel" {
		t.Fatalf("head of a record of the format before: %+v, %v", h, err)
	}
}
