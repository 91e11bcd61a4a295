package archive_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

func openFDs(t *testing.T) int {
	t.Helper()
	runtime.GC()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		testutil.Require(t, "/proc/self/fd", err)
	}
	return len(es)
}

// More directories than the extractor keeps open, written to in turn
// (each directory's descriptor closed and opened again): every file lands
// in its own directory, and no descriptor is left open, whether the
// archive is unpacked or refused half way.
func TestManyDirectoriesInTurn(t *testing.T) {
	const dirs = 700
	var es []entry
	for round := 0; round < 3; round++ {
		for i := 0; i < dirs; i++ {
			es = append(es, file(fmt.Sprintf("d%03d/a/b/c/f%d", i, round), fmt.Sprintf("%d/%d", i, round)))
		}
	}
	good := makeTar(t, es...)
	bad := makeTar(t, append(es[:dirs+dirs/2:dirs+dirs/2], dir("d001/"), symlink("d001", "x"), file("d001/a/z", "evil"))...)
	before := openFDs(t)
	dir, st, err := extract(t, good, archive.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != int64(len(es)+4*dirs) {
		t.Errorf("entries = %d", st.Entries)
	}
	for i := 0; i < dirs; i++ {
		for round := 0; round < 3; round++ {
			b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("d%03d/a/b/c/f%d", i, round)))
			if want := fmt.Sprintf("%d/%d", i, round); err != nil || string(b) != want {
				t.Fatalf("d%03d/s/f%d = %q, %v; want %q", i, round, b, err, want)
			}
		}
	}
	if _, _, err := extract(t, bad, archive.Options{}); err == nil {
		t.Fatal("a directory replaced by a link was unpacked")
	}
	if _, _, err := extract(t, gz(t, good)[:20000], archive.Options{}); err == nil {
		t.Fatal("a truncated archive was unpacked")
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d descriptors open after the extractions, %d before", after, before)
	}
}

// A process allowed few descriptors (a service manager's LimitNOFILE, or
// an agent holding many for other services and connections) still
// unpacks a release of more directories than it may hold open: the
// directories kept open make room rather than fail the install.
func TestManyDirectoriesUnderALowDescriptorLimit(t *testing.T) {
	const dirs = 600
	var es []entry
	for round := 0; round < 2; round++ {
		for i := 0; i < dirs; i++ {
			es = append(es, file(fmt.Sprintf("d%03d/a/b/c/f%d", i, round), "x"))
		}
	}
	data := makeTar(t, es...)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		testutil.Require(t, "getrlimit", err)
	}
	lim := old
	lim.Cur = uint64(openFDs(t) + 100)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		testutil.Require(t, "setrlimit", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	dir, _, err := extract(t, data, archive.Options{})
	if err != nil {
		t.Fatalf("with %d descriptors allowed: %v", lim.Cur, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "d599/a/b/c/f1")); err != nil || string(b) != "x" {
		t.Fatalf("d599/f1 = %q, %v", b, err)
	}
}
