package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/internal/trim"
)

// Values of a service's stage key.
const (
	// StageAhead: a release the host may take is downloaded, verified
	// and unpacked before the fleet slot is taken; the slot covers only
	// the before hooks, the switch, the after hooks and the checks.
	StageAhead = "ahead"
	// StageOff: the download happens inside the slot, for hosts whose
	// disk has no room for a release waiting beside the current one.
	StageOff = "off"
)

// Staging keeps at most one release per service: the txn whose ahead
// steps (preflight, signature, fetch) are done, its release unpacked
// under staging/, not yet promoted. It lives in memory only: a restart
// finds the directory under staging/, which recover removes, so a crash
// while staging, or with a release staged, leaves nothing behind.
//
// A staged release is installed only if the artifact, looked at again
// once the slot is held, is still the one staged; anything else (a
// release published on top, the artifact put back to the release that
// is installed) drops it.

// stageAhead stages info, unless the service stages nothing or info is
// staged already. It returns a failure's outcome, finished by the
// caller as any failed update is: a refused signature or archive found
// while staging is the release's fault, as it would be in the slot.
func (r *Runner) stageAhead(ctx context.Context, st *State, info artifact.Info) *Outcome {
	if !r.svc.StageAhead() {
		return nil
	}
	if s := r.staged; s != nil {
		switch {
		case !sameRelease(s.info, info):
			r.dropStaged("a newer release was published over it")
		case !r.stagedPresent():
			r.dropStaged("its directory is gone")
		default:
			return nil
		}
	}
	if r.updating != nil {
		r.updating.Add(1)
		defer r.updating.Add(-1)
	}
	trim.Text()
	sctx, cancel := context.WithTimeoutCause(ctx, r.svc.UpdateTimeout, errUpdateTimeout)
	defer cancel()
	t := r.begin(st, info, nil)
	t.logger.Info("staging", "release", t.id, "from", info.Key, "size", info.Size)
	if o := t.runSteps(sctx, t.steps(sctx), true); o != nil {
		return o
	}
	t.staged = true
	r.staged = t
	r.setStaged(info.Checksum())
	t.logger.Info("staged", "release", t.id, "dir", t.stage)
	r.crashPoint("staged")
	return nil
}

// takeStaged returns the staged release as the txn of this update, if it
// is the one info names; nil if there is none. A staged release that is
// not info is dropped: it is never installed.
func (r *Runner) takeStaged(st *State, info artifact.Info, lost <-chan struct{}) *txn {
	s := r.staged
	if s == nil {
		return nil
	}
	if !sameRelease(s.info, info) || !r.stagedPresent() {
		r.dropStaged("the artifact changed while the host waited")
		return nil
	}
	// A delta linked the unchanged files of the current release: its
	// application may have written them since. The release is what its
	// tar made, or it is unpacked again.
	if s.files != nil {
		if err := s.files.Check(s.stage); err != nil {
			r.dropStaged(err.Error())
			return nil
		}
	}
	r.staged = nil
	r.setStaged("")
	// The state and the current release may have moved since staging
	// (a rollback, an update of another process): the txn starts from
	// them as they are now, with what staging made.
	t := r.begin(st, s.info, lost)
	t.id, t.stage = s.id, s.stage
	t.ev.Release, t.ev.ReleaseDir = s.id, r.lay.releaseDir(s.id)
	t.sums, t.pending, t.claims, t.verified = s.sums, s.pending, s.claims, s.verified
	t.undo = s.undo // removes the staged release; closes the chunk cache's filler
	t.staged, t.files = true, s.files
	return t
}

// keepStaged drops the staged release unless the artifact still is it:
// called with what a look found when it stops the update.
func (r *Runner) keepStaged(info artifact.Info, stop *Outcome) {
	if r.staged == nil || stop == nil {
		return
	}
	switch {
	case stop.Result == ResultError:
		// The store or the fleet could not be asked: nothing is known.
	case stop.Result == ResultNoop:
		r.dropStaged("the artifact is the release installed")
	case !sameRelease(r.staged.info, info):
		r.dropStaged("a newer release was published over it")
	}
}

// dropStaged removes the staged release.
func (r *Runner) dropStaged(why string) {
	s := r.staged
	if s == nil {
		return
	}
	r.staged = nil
	r.setStaged("")
	s.logger.Info("dropping the staged release; it is not installed", "release", s.id, "reason", why)
	if err := os.RemoveAll(s.stage); err != nil {
		s.logger.Warn("could not remove the staged release", "release", s.id, "error", err)
	}
	// The undos of the ahead steps (the chunk cache's filler) end it.
	for i := len(s.undo) - 1; i >= 0; i-- {
		s.undo[i](context.Background())
	}
}

// stagedPresent says whether the staged release's directory is still
// there (nothing else removes it while the agent runs; a hand might).
func (r *Runner) stagedPresent() bool {
	fi, err := os.Stat(r.staged.stage)
	return err == nil && fi.IsDir()
}

// sameRelease says whether a and b are the same version of the artifact.
func sameRelease(a, b artifact.Info) bool {
	if a.Checksum() != b.Checksum() || a.Key != b.Key {
		return false
	}
	return a.VersionID == "" || b.VersionID == "" || a.VersionID == b.VersionID
}

func (r *Runner) setStaged(sum string) {
	r.mu.Lock()
	r.status.Staged = sum
	r.mu.Unlock()
}

// cleanChunkTemps removes the pieces of chunks a download was writing
// into the chunk cache when the process died (a staging fills the cache
// as it unpacks): named only once verified, they are never used, and
// nothing else would remove them.
func cleanChunkTemps(dir string, logger *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, ".fill-") || strings.HasPrefix(n, ".skel-") || strings.HasPrefix(n, ".fetch-") {
			p := filepath.Join(dir, n)
			logger.Info("removing leftover of an interrupted update", "path", p)
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("clean the chunk cache: %w", err)
			}
		}
	}
	return nil
}
