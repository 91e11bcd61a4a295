package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// layout is where one service's files live.
type layout struct {
	dir   string             // <state_path>/<service>
	dest  string             // the destination symlink
	crash func(point string) // tests: crash here
}

func (l layout) releases() string            { return filepath.Join(l.dir, "releases") }
func (l layout) staging() string             { return filepath.Join(l.dir, "staging") }
func (l layout) shared() string              { return filepath.Join(l.dir, "shared") }
func (l layout) releaseDir(id string) string { return filepath.Join(l.releases(), id) }
func (l layout) tmpLink() string {
	return filepath.Join(filepath.Dir(l.dest), "."+filepath.Base(l.dest)+".dropship-tmp")
}

// current returns the id of the release destination points at, or "".
func (l layout) current() string {
	target, err := os.Readlink(l.dest)
	if err != nil {
		return ""
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(l.dest), target)
	}
	if filepath.Dir(filepath.Clean(target)) != filepath.Clean(l.releases()) {
		return ""
	}
	return filepath.Base(target)
}

// newID names a release: sortable by time, with the checksum's start.
func (l layout) newID(checksum string, now time.Time) string {
	short := strings.NewReplacer(":", "", "/", "", ".", "").Replace(checksum)
	if len(short) > 12 {
		short = short[:12]
	}
	base := now.UTC().Format("20060102T150405.000Z") + "-" + short
	id := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(l.releaseDir(id)); errors.Is(err, fs.ErrNotExist) {
			return id
		}
		id = fmt.Sprintf("%s-%d", base, i)
	}
}

// present says whether release id's directory is there.
func (l layout) present(id string) bool {
	if id == "" {
		return false
	}
	fi, err := os.Stat(l.releaseDir(id))
	return err == nil && fi.IsDir()
}

// switchTo points destination at release id by renaming a new symlink over
// it: at every instant the destination is the old release or the new one.
// What the destination was before dropship managed it (a real directory,
// or a link of another tool such as a Capistrano `current`) is moved
// aside, never deleted, and its new name returned so a failed first
// install can put it back.
func (l layout) switchTo(id string, logger *slog.Logger) (movedAside string, err error) {
	// A kept release removed by hand: the destination would point nowhere.
	if !l.present(id) {
		return "", fmt.Errorf("switch %s: release %s is not there (removed by hand?)", l.dest, id)
	}
	if err := os.MkdirAll(filepath.Dir(l.dest), 0o755); err != nil {
		return "", fmt.Errorf("switch %s: %w", l.dest, err)
	}
	if fi, err := os.Lstat(l.dest); err == nil && (fi.Mode()&fs.ModeSymlink == 0 || l.current() == "") {
		movedAside = fmt.Sprintf("%s.dropship-orig-%s", l.dest, time.Now().UTC().Format("20060102T150405.000Z"))
		if err := os.Rename(l.dest, movedAside); err != nil {
			return "", fmt.Errorf("move %s aside: %w", l.dest, err)
		}
		what := "a directory"
		if fi.Mode()&fs.ModeSymlink != 0 {
			what = "a link not made by dropship"
		}
		logger.Warn("destination was "+what+": moved aside, not deleted", "destination", l.dest, "moved_to", movedAside)
	}
	// Until the rename, the destination is not ours: a failure puts back
	// what was moved aside.
	putBack := func(err error) (string, error) {
		if movedAside == "" {
			return "", err
		}
		if rerr := os.Rename(movedAside, l.dest); rerr != nil {
			return movedAside, fmt.Errorf("%w; and putting %s back failed: %v", err, movedAside, rerr)
		}
		return "", err
	}
	tmp := l.tmpLink()
	os.Remove(tmp)
	if err := os.Symlink(l.releaseDir(id), tmp); err != nil {
		return putBack(fmt.Errorf("switch %s: %w", l.dest, err))
	}
	if l.crash != nil {
		l.crash("linked")
	}
	if err := os.Rename(tmp, l.dest); err != nil {
		os.Remove(tmp)
		return putBack(fmt.Errorf("switch %s: %w", l.dest, err))
	}
	if err := syncDir(filepath.Dir(l.dest)); err != nil {
		return movedAside, fmt.Errorf("switch %s: %w", l.dest, err)
	}
	return movedAside, nil
}

// unswitch undoes a first install: destination goes back to what it was
// (moved aside by switchTo), or goes away if there was nothing.
func (l layout) unswitch(movedAside string) error {
	if err := os.Remove(l.dest); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if movedAside != "" {
		if err := os.Rename(movedAside, l.dest); err != nil {
			return err
		}
	}
	return syncDir(filepath.Dir(l.dest))
}

// promote moves a verified release from staging into releases/, and makes
// the rename durable before anything points at it.
func (l layout) promote(stage, id string) error {
	if err := os.MkdirAll(l.releases(), 0o755); err != nil {
		return fmt.Errorf("promote release: %w", err)
	}
	if err := os.Rename(stage, l.releaseDir(id)); err != nil {
		return fmt.Errorf("promote release: %w", err)
	}
	if err := syncDir(l.releases()); err != nil {
		return fmt.Errorf("promote release: %w", err)
	}
	return nil
}

// recoverDisk removes what an interrupted update left: staging (partial
// downloads and unpacks) and a half-made switch symlink. Destination
// itself is always whole: it is only ever replaced by rename.
// removingPrefix names what recoverDisk is removing under staging/.
const removingPrefix = ".removing-"

func (l layout) recoverDisk(logger *slog.Logger) error {
	entries, err := os.ReadDir(l.staging())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(l.staging(), e.Name())
		logger.Info("removing leftover of an interrupted update", "path", p)
		// Renamed first: a removal that stops part way (this process
		// killed, a file that cannot be removed) leaves no half release
		// under the name a running agent staged it as, which that agent
		// would install (it takes a staged directory still there for
		// whole).
		if !strings.HasPrefix(e.Name(), removingPrefix) {
			gone := filepath.Join(l.staging(), removingPrefix+e.Name())
			err := os.Rename(p, gone)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				// What an earlier removal left under that name first.
				if err := os.RemoveAll(gone); err != nil {
					return fmt.Errorf("clean staging: %w", err)
				}
				err = os.Rename(p, gone)
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("clean staging: %w", err)
			}
			p = gone
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("clean staging: %w", err)
		}
	}
	if err := os.Remove(l.tmpLink()); err == nil {
		logger.Info("removed a half-made switch link", "path", l.tmpLink())
	}
	return nil
}

// sweep removes the release directories st does not keep (trimmed, or
// left by an interrupted update), never the one destination points at.
func (l layout) sweep(st *State, logger *slog.Logger) {
	known := map[string]bool{l.current(): true, st.Release: true}
	for _, r := range st.Releases {
		known[r.ID] = true
	}
	entries, _ := os.ReadDir(l.releases())
	for _, e := range entries {
		if !known[e.Name()] {
			l.remove(e.Name(), logger)
		}
	}
}

func (l layout) remove(id string, logger *slog.Logger) {
	p := l.releaseDir(id)
	// A release may hold read-only directories; make them writable first.
	// Its files may belong to the service's user, who can swap a
	// directory for a link while this runs: the modes are changed through
	// the open release directory (os.Root: *at calls, no link leads out
	// of it), never by a path.
	if root, err := os.OpenRoot(p); err == nil {
		fs.WalkDir(root.FS(), ".", func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				root.Chmod(path, 0o755)
			}
			return nil
		})
		root.Close()
	}
	if err := os.RemoveAll(p); err != nil {
		logger.Warn("cannot remove old release", "release", id, "error", err)
		return
	}
	logger.Info("pruned release", "release", id)
}

// freeBytes is the space an unprivileged writer may still use under dir.
func freeBytes(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// syncFS flushes the filesystem holding dir: one call instead of an fsync
// per unpacked file, so a power cut after the switch finds whole files.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
