package archive_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
)

func owner(fi fs.FileInfo) (int, int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// With owner set and preserve_setuid, the setuid bit survives the chown
// (which clears it): the mode is applied after the owner.
func TestSetuidSurvivesOwner(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: chown must be tested there")
		}
		t.Skip("chown needs root")
	}
	e := file("bin/tool", "x")
	e.mode = 0o4755
	dir, _, err := extract(t, makeTar(t, e), archive.Options{UID: 65534, GID: 65534, PreserveSetuid: true})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(dir, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	if uid, _ := owner(fi); uid != 65534 || fi.Mode()&fs.ModeSetuid == 0 {
		t.Fatalf("owner %d, mode %v: setuid lost", uid, fi.Mode())
	}
}
