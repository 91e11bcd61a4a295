package agent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// Pruning makes a release's directories writable before removing them;
// a service user who owns files in the release can swap a directory for
// a link to one outside while that happens. The modes are changed
// through the open release directory, never by a path: the directory
// outside keeps its mode, however the swaps fall.
func TestPruneNeverChmodsThroughASwappedLink(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "private")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(outside, 0o700)
	lay := layout{dir: t.TempDir()}
	logger := slog.New(slog.DiscardHandler)
	const dirs = 32
	for round := range 100 {
		id := fmt.Sprintf("r%d", round)
		top := filepath.Join(lay.releaseDir(id), "d")
		for i := range dirs {
			if err := os.MkdirAll(filepath.Join(top, fmt.Sprint(i), "x"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // the service user, swapping directories for links out
			defer wg.Done()
			for i := 0; !stop.Load(); i = (i + 1) % dirs {
				p := filepath.Join(top, fmt.Sprint(i))
				if os.Rename(p, p+".real") != nil {
					continue
				}
				os.Symlink(outside, p)
				os.Remove(p)
				os.Rename(p+".real", p)
			}
		}()
		lay.remove(id, logger)
		stop.Store(true)
		wg.Wait()
		if fi, err := os.Stat(outside); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("round %d: the directory outside the release is now %v (%v)", round, fi.Mode().Perm(), err)
		}
	}
}
