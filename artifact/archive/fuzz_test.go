package archive_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
)

// FuzzExtract feeds arbitrary bytes to the unpacker: it may refuse them,
// but must not panic, hang or write outside the release directory.
func FuzzExtract(f *testing.F) {
	f.Add(makeTar(f, sample...))
	f.Add(gz(f, makeTar(f, sample...)))
	f.Add(makeTar(f, file("../x", "evil")))
	f.Add(makeTar(f, dir("d/"), symlink("d/s", "."), symlink("d/up", "s/../../..")))
	f.Add(makeTar(f, dir("d/"), symlink("link", "d"), file("link/x", "evil")))
	f.Add(makeTar(f, entry{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}))
	f.Add([]byte("PK\x03\x04garbage"))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "release")
		os.Mkdir(dir, 0o755)
		opt := archive.Options{Name: "fuzz.bin", UID: -1, GID: -1, Spool: parent, MaxSize: 64 << 20, MaxFiles: 10000}
		archive.Extract(context.Background(), bytes.NewReader(data), dir, opt)
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.Name() != "release" {
				t.Fatalf("wrote %q outside the release", e.Name())
			}
		}
		// Every link left behind resolves inside the release.
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.Type()&os.ModeSymlink == 0 {
				return nil
			}
			if real, err := filepath.EvalSymlinks(p); err == nil {
				realDir, _ := filepath.EvalSymlinks(dir)
				if rel, _ := filepath.Rel(realDir, real); rel == ".." || len(rel) > 2 && rel[:3] == "../" {
					t.Fatalf("symlink %s resolves outside: %s", p, real)
				}
			}
			return nil
		})
	})
}
