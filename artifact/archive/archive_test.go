package archive_test

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/dropshipd/dropship/artifact/archive"
)

// entry is one tar entry of a test archive.
type entry struct {
	name     string
	typ      byte
	body     string
	link     string
	mode     int64
	devmajor int64
}

func file(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeLink, link: target, mode: 0o644}
}

func makeTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)), Devmajor: e.devmajor}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func extract(t *testing.T, data []byte, opt archive.Options) (string, archive.Stats, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "release")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if opt.UID == 0 && opt.GID == 0 {
		opt.UID, opt.GID = -1, -1
	}
	opt.Spool = t.TempDir()
	st, err := archive.Extract(context.Background(), bytes.NewReader(data), dir, opt)
	return dir, st, err
}

var sample = []entry{
	dir("app/"), file("app/main.sh", "#!/bin/sh\necho hi\n"), dir("app/conf/"),
	file("app/conf/a.txt", "alpha"), symlink("app/current.txt", "conf/a.txt"), hardlink("app/b.txt", "app/conf/a.txt"),
}

func checkSample(t *testing.T, dir string) {
	t.Helper()
	for name, want := range map[string]string{"app/main.sh": "#!/bin/sh\necho hi\n", "app/conf/a.txt": "alpha", "app/current.txt": "alpha", "app/b.txt": "alpha"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "app/current.txt")); err != nil || target != "conf/a.txt" {
		t.Errorf("symlink = %q, %v", target, err)
	}
}

func TestRoundTripEveryFormat(t *testing.T) {
	t.Parallel()
	plainTar := makeTar(t, sample...)
	zstdOf := func(b []byte) []byte {
		var buf bytes.Buffer
		w, _ := zstd.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	xzOf := func(b []byte) []byte {
		var buf bytes.Buffer
		w, _ := xz.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	bz2Of := func(b []byte) []byte {
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bzip2 (installed by `make rig`): %v", err)
		}
		return out
	}
	zipOf := func() []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		zw.Create("app/")
		w, _ := zw.Create("app/main.sh")
		io.WriteString(w, "#!/bin/sh\necho hi\n")
		w, _ = zw.Create("app/conf/a.txt")
		io.WriteString(w, "alpha")
		w, _ = zw.Create("app/b.txt")
		io.WriteString(w, "alpha")
		h := &zip.FileHeader{Name: "app/current.txt"}
		h.SetMode(fs.ModeSymlink | 0o777)
		w, _ = zw.CreateHeader(h)
		io.WriteString(w, "conf/a.txt")
		zw.Close()
		return buf.Bytes()
	}
	cases := []struct {
		name, format string
		data         []byte
	}{
		{"x.tar", archive.Tar, plainTar},
		{"x.tar.gz", archive.TarGz, gz(t, plainTar)},
		{"x.tgz", archive.TarGz, gz(t, plainTar)},
		{"x.tar.zst", archive.TarZst, zstdOf(plainTar)},
		{"x.tar.xz", archive.TarXz, xzOf(plainTar)},
		{"x.tar.bz2", archive.TarBz2, bz2Of(plainTar)},
		{"x.zip", archive.Zip, zipOf()},
		// Magic bytes decide, whatever the name or the store's content type.
		{"download", archive.TarGz, gz(t, plainTar)},
		{"release.bin", archive.TarZst, zstdOf(plainTar)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, st, err := extract(t, c.data, archive.Options{Name: c.name})
			if err != nil {
				t.Fatal(err)
			}
			if st.Format != c.format {
				t.Errorf("format = %s, want %s", st.Format, c.format)
			}
			checkSample(t, dir)
		})
	}
}

func TestPlainFile(t *testing.T) {
	t.Parallel()
	dir, st, err := extract(t, []byte("#!/bin/sh\necho plain\n"), archive.Options{Name: "bin/tool.sh", FileMode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "tool.sh"))
	if err != nil || st.Format != archive.Plain || fi.Mode().Perm() != 0o755 {
		t.Fatalf("plain file: %v, %v, %v", fi, st.Format, err)
	}
}

func TestContentTypeOverride(t *testing.T) {
	t.Parallel()
	// A gzip stream forced to be a plain file is placed as it is.
	data := gz(t, makeTar(t, sample...))
	f, err := archive.FromContentType("application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := extract(t, data, archive.Options{Name: "x.tar.gz", Format: f})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "x.tar.gz")); !bytes.Equal(got, data) {
		t.Fatal("forced plain file not placed as is")
	}
	if _, err := archive.FromContentType("text/html"); err == nil {
		t.Fatal("unknown content type accepted")
	}
}

func TestHostileArchivesRefused(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0", 40<<20)
	cases := []struct {
		name   string
		data   []byte
		opt    archive.Options
		entry  string // the entry the error must name
		reason string
	}{
		{"dotdot", makeTar(t, file("ok.txt", "x"), file("../x", "evil")), archive.Options{}, "../x", ".."},
		{"nested dotdot", makeTar(t, file("a/../../x", "evil")), archive.Options{}, "a/../../x", ".."},
		{"absolute", makeTar(t, file("/etc/x", "evil")), archive.Options{}, "/etc/x", "absolute"},
		{"symlink out", makeTar(t, symlink("l", "../../etc/passwd")), archive.Options{}, "l", "outside"},
		{"symlink absolute", makeTar(t, symlink("l", "/etc/passwd")), archive.Options{}, "l", "outside"},
		{"symlink chain out", makeTar(t, dir("d/"), symlink("d/s", "."), symlink("d/up", "s/../../..")), archive.Options{}, "d/up", "outside"},
		{"hardlink out", makeTar(t, hardlink("h", "../../etc/passwd")), archive.Options{}, "h", "outside"},
		{"hardlink absolute", makeTar(t, hardlink("h", "/etc/passwd")), archive.Options{}, "h", "outside"},
		{"write through symlink", makeTar(t, dir("d/"), symlink("link", "d"), file("link/x", "evil")), archive.Options{}, "link/x", "through the symlink"},
		{"device", makeTar(t, entry{name: "dev", typ: tar.TypeChar, mode: 0o600, devmajor: 1}), archive.Options{}, "dev", "device"},
		{"fifo", makeTar(t, entry{name: "fifo", typ: tar.TypeFifo, mode: 0o600}), archive.Options{}, "fifo", "FIFO"},
		{"dir replaced by link", makeTar(t, dir("d/"), file("d/a", "x"), symlink("d", "elsewhere")), archive.Options{}, "d", "replaces a directory"},
		{"dir after file", makeTar(t, file("d", "x"), dir("d/")), archive.Options{}, "d/", "replaces a file"},
		{"dir after symlink", makeTar(t, symlink("l", "."), dir("l/")), archive.Options{}, "l/", "replaces a symlink"},
		{"file after symlink", makeTar(t, dir("t/"), symlink("l", "t"), file("l", "x")), archive.Options{}, "l", "replaces a symlink"},
		{"symlink twice", makeTar(t, symlink("l", "a"), symlink("l", "b")), archive.Options{}, "l", "replaces a symlink"},
		{"hardlink to symlink", makeTar(t, symlink("l", "x"), hardlink("h", "l")), archive.Options{}, "h", "not a regular file"},
		{"hardlink to dir", makeTar(t, dir("d/"), hardlink("h", "d")), archive.Options{}, "h", "not a regular file"},
		{"hardlink through symlink", makeTar(t, dir("d/"), file("d/f", "x"), symlink("l", "d"), hardlink("h", "l/f")), archive.Options{}, "h", "through the symlink"},
		{"windows dotdot", makeTar(t, file(`a\..\..\x`, "evil")), archive.Options{}, `a\..\..\x`, ".."},
		{"windows drive", makeTar(t, file(`C:\x`, "evil")), archive.Options{}, `C:\x`, "absolute"},
		{"through symlink, windows separator", makeTar(t, dir("d/"), symlink("l", "d"), file(`l\x`, "evil")), archive.Options{}, `l\x`, "through the symlink"},
		{"block device", makeTar(t, entry{name: "b", typ: tar.TypeBlock, mode: 0o600}), archive.Options{}, "b", "device"},
		{"max files", makeTar(t, file("a", "1"), file("b", "2"), file("c", "3")), archive.Options{MaxFiles: 2}, "c", "max_files"},
		{"max size", makeTar(t, file("a", "12345"), file("b", "67890")), archive.Options{MaxSize: 8}, "b", "max_size"},
		{"bomb", gz(t, makeTar(t, file("zeros", big))), archive.Options{MaxRatio: 50}, "zeros", "compression ratio"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "release")
			os.Mkdir(dir, 0o755)
			c.opt.UID, c.opt.GID, c.opt.Spool = -1, -1, parent
			_, err := archive.Extract(context.Background(), bytes.NewReader(c.data), dir, c.opt)
			var ee *archive.EntryError
			if !errors.As(err, &ee) || !errors.Is(err, archive.ErrRefused) {
				t.Fatalf("err = %v, want an EntryError", err)
			}
			if ee.Entry != c.entry || !strings.Contains(ee.Reason, c.reason) {
				t.Fatalf("refused %q for %q; want entry %q, reason with %q", ee.Entry, ee.Reason, c.entry, c.reason)
			}
			// Nothing was written outside the release directory.
			entries, _ := os.ReadDir(parent)
			for _, e := range entries {
				if e.Name() != "release" {
					t.Errorf("wrote %s outside the release", e.Name())
				}
			}
		})
	}
}

func TestSetuidStrippedUnlessPreserved(t *testing.T) {
	t.Parallel()
	data := makeTar(t, entry{name: "suid", typ: tar.TypeReg, body: "x", mode: 0o4755}, entry{name: "sgid", typ: tar.TypeReg, body: "x", mode: 0o2755})
	for _, preserve := range []bool{false, true} {
		dir, _, err := extract(t, data, archive.Options{PreserveSetuid: preserve})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"suid", "sgid"} {
			fi, _ := os.Stat(filepath.Join(dir, n))
			special := fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0
			if special != preserve || fi.Mode().Perm() != 0o755 {
				t.Errorf("preserve=%v: %s mode %v", preserve, n, fi.Mode())
			}
		}
	}
}

func TestModesOverride(t *testing.T) {
	t.Parallel()
	data := makeTar(t, entry{name: "d/", typ: tar.TypeDir, mode: 0o700}, entry{name: "d/f", typ: tar.TypeReg, body: "x", mode: 0o600}, file("implicit/g", "y"))
	dir, _, err := extract(t, data, archive.Options{FileMode: 0o640, DirMode: 0o750})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{"d": 0o750 | fs.ModeDir, "d/f": 0o640, "implicit": 0o750 | fs.ModeDir, "implicit/g": 0o640} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v (%v)", name, fi.Mode(), want, err)
		}
	}
	// Without overrides the archive's modes are kept.
	dir, _, err = extract(t, data, archive.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "d/f")); fi.Mode().Perm() != 0o600 {
		t.Errorf("d/f mode %v, want 0600 from the archive", fi.Mode())
	}
}

func TestOwnerApplied(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: chown must be tested there")
		}
		t.Skip("chown needs root")
	}
	dir, _, err := extract(t, makeTar(t, sample...), archive.Options{UID: 65534, GID: 65534})
	if err != nil {
		t.Fatal(err)
	}
	var st fs.FileInfo
	if st, err = os.Lstat(filepath.Join(dir, "app/conf/a.txt")); err != nil {
		t.Fatal(err)
	}
	if uid, gid := owner(st); uid != 65534 || gid != 65534 {
		t.Errorf("owner %d:%d", uid, gid)
	}
}

func TestTruncatedStreamIsAnError(t *testing.T) {
	t.Parallel()
	data := gz(t, makeTar(t, file("a", strings.Repeat("abc", 100000))))
	_, _, err := extract(t, data[:len(data)/2], archive.Options{})
	if err == nil {
		t.Fatal("truncated gzip extracted without error")
	}
}
