package file_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/artifact/sourcetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	path := func(key string) string { return filepath.Join(root, key) }
	sourcetest.Run(t, sourcetest.Harness{
		Put: func(t *testing.T, key string, data []byte) {
			os.MkdirAll(filepath.Dir(path(key)), 0o755)
			tmp := path(key) + ".tmp"
			if err := os.WriteFile(tmp, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path(key)); err != nil {
				t.Fatal(err)
			}
		},
		Source: func(t *testing.T, key string) artifact.Source { return file.New(path(key)) },
	})
}

func TestHashedOnlyWhenChanged(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "a")
	os.WriteFile(p, []byte("one"), 0o644)
	src := file.New(p)
	a, err := src.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Same size, same mtime: the cached checksum stands, even though the
	// bytes differ (this is what saves re-reading a large artifact).
	fi, _ := os.Stat(p)
	os.WriteFile(p, []byte("two"), 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	b, _ := src.Stat(context.Background())
	if b.Checksum() != a.Checksum() {
		t.Fatal("rehashed although size and mtime are unchanged")
	}
	later := fi.ModTime().Add(time.Second)
	os.Chtimes(p, later, later)
	c, _ := src.Stat(context.Background())
	if c.Checksum() == a.Checksum() {
		t.Fatal("not rehashed after mtime changed")
	}
}

func TestChunks(t *testing.T) {
	sourcetest.RunChunks(t, sourcetest.ChunkHarness{
		Store: func(t *testing.T) (artifact.Store, string) { return file.Store{}, t.TempDir() },
	})
}
