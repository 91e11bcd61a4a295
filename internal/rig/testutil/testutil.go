// Package testutil holds helpers shared by the tests of several packages.
package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// File is one entry of a test tarball.
type File struct {
	Name string
	Body string
	Mode int64
	Type byte   // tar.TypeReg when zero
	Link string // for links
}

// TarGz builds a .tar.gz of files.
func TarGz(t testing.TB, files ...File) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		hdr := &tar.Header{Name: f.Name, Mode: f.Mode, Typeflag: f.Type, Linkname: f.Link}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(f.Body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			tw.Write([]byte(f.Body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// WriteFile writes data to path atomically (as a publisher should),
// creating its directory.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// RequireServer fails (in CI) or skips (locally) a test whose real server
// could not be started.
func RequireServer(t testing.TB, name string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required in CI and could not be started: %v", name, err)
	}
	t.Skipf("%s not available (%v); run `make rig` to install it", name, err)
}

// Require fails (in CI, which runs as root with the rig installed) or
// skips (locally) a test that needs what, when err says it is missing.
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required in CI: %v", what, err)
	}
	t.Skipf("needs %s: %v", what, err)
}

// RequireRoot is Require for root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Require(t, "root", fmt.Errorf("running as uid %d (%s)", os.Geteuid(), why))
	}
}
