package archive_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A file system with no inode left is the host's trouble, not the
// archive's: the error is not a refusal (which would trip the fleet's
// breaker for a good release), and it says why.
func TestNoRoomOnTheHostIsNotARefusedArchive(t *testing.T) {
	testutil.RequireRoot(t, "mounts a small tmpfs")
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=16", "tmpfs", mnt).CombinedOutput(); err != nil {
		testutil.Require(t, "a tmpfs mount", fmt.Errorf("%v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	var files []entry
	for i := range 10 {
		files = append(files, dir(fmt.Sprintf("d%02d", i)), file(fmt.Sprintf("d%02d/f", i), "x"))
	}
	// A file whose directories, more than the inodes left, the tar does
	// not list.
	implied := []entry{file(strings.Repeat("d/", 20)+"f", "x")}
	for i, data := range [][]byte{makeTar(t, files...), makeTar(t, implied...)} {
		for _, reuse := range []bool{false, true} {
			dest := filepath.Join(mnt, fmt.Sprint(i, reuse))
			os.Mkdir(dest, 0o755)
			opt := archive.Options{UID: -1, GID: -1}
			if reuse {
				opt.Made = func(*archive.Entry, archive.FileStat) {}
			}
			_, err := archive.Extract(context.Background(), bytes.NewReader(data), dest, opt)
			if err == nil || errors.Is(err, archive.ErrRefused) || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("tar %d made with Made %v on a full file system: %v (refused: %v)", i, reuse, err, errors.Is(err, archive.ErrRefused))
			}
			os.RemoveAll(dest)
		}
	}
}
