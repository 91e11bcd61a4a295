package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"aead.dev/minisign"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/chunks"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/prefetch"
)

// The update as a transaction, a step per function:
//
//	preflight → signature → fetch → shared → promote → before → activate (switch, after) → check → commit
//
// With trusted_keys, the signature comes first: its trusted comment is
// authenticated and judged, and the size it vouches for compared with the
// object's, before the body is read; the body is then spooled and its
// bytes verified against the signature before anything is unpacked.
//
// The release is promoted (moved out of staging, not current) before the
// before hooks, so that they can work in it (migrations, say) with the
// shared paths linked.
//
// Each step returns an error and registers what undoes it; a failure runs
// the undos newest first, so the host is left on the release it had.
// activate is the only way a release becomes current, here and in every
// rollback. The state is changed through State's methods and saved by
// Runner.finish alone.

// ErrAbandoned is an update stopped before the switch by a shutdown (or
// the update_timeout): the previous release stays, and a shutdown's is an
// error of the circumstances, not a failure of the release.
var ErrAbandoned = errors.New("update abandoned before the switch")

var (
	errLost          = errors.New("lost the fleet slot before the switch; update abandoned")
	errUpdateTimeout = errors.New("update_timeout reached")
)

// txn is one update of one service to one artifact version.
type txn struct {
	r    *Runner
	st   *State
	info artifact.Info
	sum  string
	lost <-chan struct{}
	// held, when set, says whether the slot is still this host's now,
	// asked with lost: see slotHeld.
	held   func() bool
	logger *slog.Logger
	start  time.Time

	id    string // the new release
	prev  string // the release to go back to; "" on a first install
	stage string
	ev    hooks.Event // what the hooks of the new release see
	sums  digests     // computed over the bytes fetched
	// pending is the signature whose trusted comment was authenticated
	// before the download; nil when no keys are configured. claims are
	// its claims once the bytes matched it too.
	pending *signature.Pending
	claims  *signature.Claims
	aside   string // what the destination was before a first install
	// verified: the bytes fetched matched the store's size and checksums,
	// so the checksum the update is known by is one computed here. Only
	// then may a failure count against it in the fleet.
	verified bool

	// watched: the health watch after the switch ran its whole window.
	watched time.Duration

	switched    bool
	undo        []func(ctx context.Context)
	rollbackErr error

	// staged: the ahead steps (download, verify, unpack) are done.
	staged bool
	// files: the record of the files the unpack made, when it had a
	// chunk index and linked files from the current release (a staged
	// release is checked against it at its switch).
	files *chunks.Files
}

// digests are what the verifier computed over the bytes it passed on.
type digests struct {
	MD5, SHA256 string
	Size        int64
}

// phaseError is a step's error when the step spans two phases (activate:
// switch, then after hooks).
type phaseError struct {
	phase Phase
	err   error
}

func (e *phaseError) Error() string { return e.err.Error() }
func (e *phaseError) Unwrap() error { return e.err }

func (r *Runner) begin(st *State, info artifact.Info, lost <-chan struct{}) *txn {
	start := r.now()
	sum := info.Checksum()
	t := &txn{r: r, st: st, info: info, sum: sum, lost: lost, start: start,
		logger: r.logger.With("checksum", sum), prev: st.Release}
	if cur := r.lay.current(); cur != t.prev {
		// Destination moved outside dropship, or an interrupted update:
		// go back to what was running before this update, whatever it is.
		if _, known := st.release(cur); known {
			t.prev = cur
		}
	}
	t.id = r.lay.newID(sum, start)
	t.stage = filepath.Join(r.lay.staging(), t.id)
	t.ev = hooks.Event{Name: r.svc.Name, Hostname: r.node, Hash: sum, PreviousHash: st.Checksum,
		Release: t.id, ReleaseDir: r.lay.releaseDir(t.id), Time: start}
	if t.prev != "" {
		t.ev.PreviousDir = r.lay.releaseDir(t.prev)
	}
	return t
}

// step is one step of the transaction; ahead steps are those staging
// runs before the slot is taken (stage.go).
type step struct {
	phase Phase
	do    func(context.Context) error
	ahead bool
}

func (t *txn) steps(outer context.Context) []step {
	return []step{
		{PhasePreflight, t.preflight, true},
		{PhaseSignature, t.openSignature, true},
		{PhaseDownload, t.fetch, true},
		{PhaseInstall, t.linkShared, false},
		{PhaseInstall, t.promote, false},
		{PhaseBefore, t.before, false},
		{PhaseSwitch, t.activate, false},
		{PhaseCheck, t.check, false},
		// The watch ends with the update's own context (shutdown,
		// update_timeout), which the switch drops for the other steps.
		{PhaseCheck, func(context.Context) error { return t.watch(outer) }, false},
	}
}

func (t *txn) run(ctx context.Context) Outcome {
	if t.info.ChecksumFrom != "" && t.info.ChecksumFrom != "content" {
		t.logger.Info("checksum source", "from", t.info.ChecksumFrom)
	}
	if t.staged {
		t.logger.Info("installing the staged release", "release", t.id, "from", t.info.Key, "size", t.info.Size)
	} else {
		t.logger.Info("installing", "release", t.id, "from", t.info.Key, "size", t.info.Size)
	}
	if o := t.runSteps(ctx, t.steps(ctx), false); o != nil {
		return *o
	}
	return t.commit()
}

// runSteps runs the steps not done yet (all of them, or with onlyAhead
// those a staging runs); a failure's outcome, or nil.
func (t *txn) runSteps(ctx context.Context, steps []step, onlyAhead bool) *Outcome {
	for _, s := range steps {
		if t.staged && s.ahead || onlyAhead && !s.ahead {
			continue
		}
		if t.switched {
			// From the switch on, the update finishes even if the agent
			// is told to stop: the hooks that start the new release must
			// run. Their own timeouts bound this.
			ctx = context.WithoutCancel(ctx)
		}
		if err := s.do(ctx); err != nil {
			phase := s.phase
			var pe *phaseError
			if errors.As(err, &pe) {
				phase = pe.phase
			}
			o := t.fail(ctx, phase, err)
			return &o
		}
	}
	return nil
}

func (t *txn) onUndo(f func(ctx context.Context)) { t.undo = append(t.undo, f) }

// stillOurs is asked before each step that changes what is installed.
func (t *txn) stillOurs(ctx context.Context) error {
	select {
	case <-t.lost:
		return errLost
	default:
	}
	if t.held != nil && !t.held() {
		return errLost
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrAbandoned, context.Cause(ctx))
	}
	return nil
}

func (t *txn) preflight(context.Context) error {
	r := t.r
	if err := os.MkdirAll(r.lay.staging(), 0o700); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	// Made 0755 by early versions: a release staged there, its files
	// the service user's (owner), waits for its slot where that user
	// could change it.
	if err := os.Chmod(r.lay.staging(), 0o700); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if r.svc.DiskFactor <= 0 || t.info.Size <= 0 {
		return nil
	}
	free, err := freeBytes(r.lay.staging())
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	need := uint64(r.svc.DiskFactor * float64(t.info.Size))
	if r.svc.Keys.Len() > 0 {
		need += uint64(t.info.Size) // the spooled download, until its signature is checked
	}
	if free < need {
		return fmt.Errorf("preflight: %d bytes free under %s, need %d (%.1f × the %d-byte artifact; set disk_space_factor to change)",
			free, r.lay.dir, need, r.svc.DiskFactor, t.info.Size)
	}
	return nil
}

// fetch downloads the pinned artifact through the verifier and unpacks
// it in staging. Without trusted keys it streams into the unpacker, and
// nothing there is trusted until the verifier has seen the last byte.
// With them, the bytes are spooled first and unpacked only once they
// match the signature. Retrying a dropped connection is the source's
// business (one policy, in the store), not the transaction's.
func (t *txn) fetch(ctx context.Context) error {
	t.onUndo(func(context.Context) { os.RemoveAll(t.stage) })
	// With a chunk index of this version and a warm cache, only the
	// chunks that changed are fetched (delta.go); else the archive.
	d := t.chunked(ctx)
	if ok, err := d.install(ctx); ok || err != nil {
		return err
	}
	if err := t.freshStage(); err != nil {
		return err
	}
	body, err := t.r.svc.Source.Open(ctx, t.info)
	if err != nil {
		return fmt.Errorf("download %s: %w", t.info.Key, err)
	}
	defer body.Close()
	if t.pending != nil {
		return t.fetchSigned(ctx, body, d)
	}
	v := artifact.NewVerifier(body, t.info)
	// Download and hashing on one core, decompression and unpacking on
	// the other; 4 × 64 KiB in flight at most.
	ahead := prefetch.New(v, 64<<10, 4)
	defer ahead.Close()
	stats, xerr := t.extract(ctx, ahead, d)
	if xerr == nil {
		// The unpacker may stop before the end (tar padding, trailers):
		// the verifier must see every byte.
		_, xerr = io.Copy(io.Discard, ahead)
	}
	ahead.Close()
	// The verifier's verdict comes first: a truncated or corrupt download
	// explains any unpack error that follows from it.
	if verr := v.Drain(); verr != nil {
		return fmt.Errorf("download %s: %w", t.info.Key, verr)
	}
	t.verified = true
	if xerr != nil {
		return fmt.Errorf("unpack %s: %w", t.info.Key, xerr)
	}
	return t.fetched(v, stats, d)
}

// fetchSigned spools the body, verifies it against the store's claims and
// then the signature, and only then unpacks it.
func (t *txn) fetchSigned(ctx context.Context, body io.Reader, d *delta) error {
	spool, err := os.CreateTemp(t.r.lay.staging(), ".download-*")
	if err != nil {
		return fmt.Errorf("download %s: %w", t.info.Key, err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	// minisign's pre-hashed mode: BLAKE2b of the bytes, as they pass.
	signed := minisign.NewReader(body)
	v := artifact.NewVerifier(signed, t.info)
	if _, err := io.Copy(spool, v); err != nil {
		return fmt.Errorf("download %s: %w", t.info.Key, err)
	}
	if verr := v.Drain(); verr != nil {
		return fmt.Errorf("download %s: %w", t.info.Key, verr)
	}
	t.verified = true
	if err := t.pending.Check(signed, v.SHA256(), v.Size()); err != nil {
		return &phaseError{PhaseSignature, fmt.Errorf("verify %s: %w", t.info.Key, err)}
	}
	c := t.pending.Claims
	t.claims = &c
	t.logger.Info("signature verified", "key_id", fmt.Sprintf("%016X", c.KeyID), "version", c.Version,
		"publisher", c.Publisher, "signed", c.Time)
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("download %s: %w", t.info.Key, err)
	}
	stats, err := t.extract(ctx, bufio.NewReaderSize(spool, 64<<10), d)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", t.info.Key, err)
	}
	return t.fetched(v, stats, d)
}

// extract unpacks r into staging; with a chunk index, the tar stream is
// copied to the chunk cache too and the files made are recorded (delta.go).
func (t *txn) extract(ctx context.Context, r io.Reader, d *delta) (archive.Stats, error) {
	opt := t.unpackOptions()
	d.fill(&opt)
	return archive.Extract(ctx, r, t.stage, opt)
}

// unpackOptions are the service's, for this release.
func (t *txn) unpackOptions() archive.Options {
	opt := t.r.svc.Unpack
	opt.Name = path.Base(strings.TrimRight(t.info.Key, "/"))
	opt.Spool = t.r.lay.staging()
	opt.FinalDir = t.r.lay.releaseDir(t.id) // links leaving the release are judged from where it will live
	opt.Aliases = []string{t.r.lay.dest}    // and a link coming back in through the destination lands in it
	return opt
}

// fetched makes the unpacked release durable and records its digests;
// the chunk cache then keeps what the unpack cut.
func (t *txn) fetched(v *artifact.Verifier, stats archive.Stats, d *delta) error {
	if err := syncFS(t.stage); err != nil {
		return fmt.Errorf("sync %s: %w", t.stage, err)
	}
	t.sums = digests{MD5: v.MD5(), SHA256: v.SHA256(), Size: v.Size()}
	d.filled()
	if t.r.obs != nil {
		t.r.obs.Downloaded(t.r.svc.Name, t.sums.Size)
	}
	t.logger.Info("downloaded and verified", "format", stats.Format, "entries", stats.Entries,
		"bytes", stats.Bytes, "md5", t.sums.MD5, "sha256", t.sums.SHA256)
	return nil
}

// openSignature checks, when the service trusts keys, that one of them
// (not revoked) signed the release, for this service, no earlier than the
// newest release installed here, and that the size and SHA-256 it vouches
// for are those the store reports for the object: all before the body is
// read. A refusal is a failure, backed off like any other; the breaker is
// not tripped by it (the checksum is the store's claim, not computed).
func (t *txn) openSignature(ctx context.Context) error {
	keys := t.r.svc.Keys
	if keys.Len() == 0 {
		return nil
	}
	src, ok := t.r.svc.Source.(artifact.Signed)
	if !ok {
		return fmt.Errorf("%s cannot hold signatures, but trusted_keys is set", t.r.svc.Source)
	}
	sig, err := src.Signature(ctx)
	if errors.Is(err, artifact.ErrNotFound) {
		return fmt.Errorf("verify %s: %w (trusted_keys is set; publish with --sign)", t.info.Key, signature.ErrUnsigned)
	}
	if err != nil {
		return fmt.Errorf("verify %s: %w", t.info.Key, err)
	}
	// The store's time for the object, when later than this host's: a
	// clock that is behind is this host's trouble, not the release's.
	now := t.r.now()
	if t.info.Modified.After(now) {
		now = t.info.Modified
	}
	// Replays are judged from the newest release ever installed here, not
	// the current one: after a rollback, the release rolled away from is
	// not installed again by putting its signed bytes back.
	want := signature.Expect{Service: t.r.svc.Name, Now: now, Current: t.st.SHA256}
	if n := t.st.NewestSigned; n != nil {
		want.After, want.AfterSHA256 = n.Time, n.SHA256
	}
	p, err := keys.Open(sig, want)
	if err != nil {
		return fmt.Errorf("verify %s: %w", t.info.Key, err)
	}
	c := p.Claims
	switch {
	case c.Size > 0 && t.info.Size >= 0 && c.Size != t.info.Size:
		return fmt.Errorf("verify %s: %w (the signature vouches for %d bytes, the object is %d; nothing was downloaded)",
			t.info.Key, signature.ErrStale, c.Size, t.info.Size)
	case c.SHA256 != "" && t.info.SHA256 != "" && c.SHA256 != t.info.SHA256:
		return fmt.Errorf("verify %s: %w (the signature vouches for sha256 %.12s…, the store reports %.12s…; nothing was downloaded)",
			t.info.Key, signature.ErrStale, c.SHA256, t.info.SHA256)
	case c.Size == 0:
		t.logger.Warn("the signature vouches for no size: the object is downloaded before its signature can be compared with it (sign with `dropship sign` or `publish --sign` to check it first)",
			"key_id", fmt.Sprintf("%016X", c.KeyID))
	}
	t.pending = p
	return nil
}

// linkShared links the service's shared directories and files into the
// release (Capistrano's linked_dirs and linked_files), before the before
// hooks run so that they already see them. What the release ships at
// such a path is replaced by the link. Every change inside the release
// goes through os.Root: a link the release ships cannot redirect it.
func (t *txn) linkShared(context.Context) error {
	svc := t.r.svc
	if len(svc.SharedDirs)+len(svc.SharedFiles) == 0 {
		return nil
	}
	shared := t.r.lay.shared()
	// The files first: a check that fails makes nothing.
	for _, f := range svc.SharedFiles {
		if fi, err := os.Stat(filepath.Join(shared, f)); err != nil || fi.IsDir() {
			return fmt.Errorf("shared file %s: put it in %s before deploying (it is linked into every release): %w",
				f, filepath.Join(shared, f), errors.Join(err, errIfDir(fi)))
		}
	}
	if err := os.MkdirAll(shared, 0o755); err != nil {
		return fmt.Errorf("shared: %w", err)
	}
	for _, d := range svc.SharedDirs {
		p := filepath.Join(shared, d)
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.MkdirAll(p, 0o755); err != nil {
				return fmt.Errorf("shared directory %s: %w", d, err)
			}
			if u := svc.Unpack; u.UID >= 0 || u.GID >= 0 {
				// The service writes there. Made again at the next try
				// if it cannot be given away: a directory left behind
				// would not be.
				if err := os.Chown(p, u.UID, u.GID); err != nil {
					return fmt.Errorf("shared directory %s: give it to the release's owner: %w", d, errors.Join(err, os.Remove(p)))
				}
			}
			t.logger.Info("created a shared directory", "path", p)
		case err != nil:
			return fmt.Errorf("shared directory %s: %w", d, err)
		case !fi.IsDir():
			return fmt.Errorf("shared directory %s: %s is not a directory", d, p)
		}
	}
	root, err := os.OpenRoot(t.stage)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, p := range append(append([]string{}, svc.SharedDirs...), svc.SharedFiles...) {
		if err := sharedParents(root, p); err != nil {
			return err
		}
		if _, err := root.Lstat(p); err == nil {
			t.logger.Info("the release ships a shared path; replaced by the link to the shared one", "path", p)
			if err := root.RemoveAll(p); err != nil {
				return fmt.Errorf("shared %s: %w", p, err)
			}
		}
		if dir := filepath.Dir(p); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("shared %s: %w", p, err)
			}
		}
		if err := root.Symlink(filepath.Join(shared, p), p); err != nil {
			return fmt.Errorf("shared %s: %w", p, err)
		}
	}
	return nil
}

// sharedParents refuses, by name, a parent of the shared path p that the
// release ships as something the link cannot be made in: a file, or a
// link out of the release (os.Root would refuse it, less clearly). A link
// that stays inside is followed.
func sharedParents(root *os.Root, p string) error {
	for dir := filepath.Dir(p); dir != "."; dir = filepath.Dir(dir) {
		fi, err := root.Lstat(dir)
		if err != nil {
			continue // missing (made below), or under one of these
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if _, err := root.Stat(dir); err != nil {
				target, _ := root.Readlink(dir)
				if errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("shared %s: the release ships %q as a link to %q, which does not exist", p, dir, target)
				}
				return fmt.Errorf("shared %s: the release ships %q as a link out of it (to %q): a shared path is never linked through one", p, dir, target)
			}
		} else if !fi.IsDir() {
			return fmt.Errorf("shared %s: the release ships %q as a file", p, dir)
		}
	}
	return nil
}

func errIfDir(fi fs.FileInfo) error {
	if fi != nil && fi.IsDir() {
		return errors.New("it is a directory")
	}
	return nil
}

// before runs the before chain. Once it has started (say, `systemctl stop
// api`), an update that stops short of the switch starts the current
// release again: never a stopped service left behind.
func (t *txn) before(ctx context.Context) error {
	if err := t.stillOurs(ctx); err != nil {
		return err
	}
	if t.prev != "" {
		t.onUndo(func(ctx context.Context) {
			if t.switched {
				return // switching back ran the current release's after hooks
			}
			ev := t.ev
			ev.Phase, ev.Result = hooks.PhaseRollback, "rollback"
			ev.Hash, ev.PreviousHash, ev.Release, ev.ReleaseDir, ev.PreviousDir = t.st.Checksum, t.sum, t.prev, t.r.lay.releaseDir(t.prev), ""
			t.logger.Warn("update stopped after its before hooks; starting the current release again", "release", t.prev)
			if _, err := t.r.activate(ctx, t.prev, "", ev, reasonRestart); err != nil {
				t.logger.Error("could not start the current release again", "release", t.prev, "error", err)
			}
		})
	}
	ev := t.ev
	ev.Phase = hooks.PhaseBefore
	return t.r.runChain(ctx, t.r.svc.Before, ev)
}

// promote moves the verified release out of staging.
func (t *txn) promote(ctx context.Context) error {
	if err := t.stillOurs(ctx); err != nil {
		return err
	}
	t.r.crashPoint("verified")
	if err := t.r.lay.promote(t.stage, t.id); err != nil {
		return err
	}
	t.onUndo(func(context.Context) {
		if t.r.lay.current() == t.id {
			// Switching back failed: the destination still points here.
			t.logger.Error("the failed release stays: the destination still points at it", "release", t.id)
			return
		}
		t.r.lay.remove(t.id, t.logger)
	})
	return nil
}

// activate makes the new release current and runs its after hooks.
func (t *txn) activate(ctx context.Context) error {
	if err := t.stillOurs(ctx); err != nil {
		return err
	}
	t.onUndo(func(ctx context.Context) {
		ev := t.ev
		ev.Phase, ev.Result = hooks.PhaseRollback, "rollback"
		ev.Hash, ev.PreviousHash = t.st.Checksum, t.sum
		ev.Release, ev.ReleaseDir, ev.PreviousDir = t.prev, "", t.ev.ReleaseDir
		if t.prev != "" {
			ev.ReleaseDir = t.r.lay.releaseDir(t.prev)
		}
		if !t.switched {
			return // the destination never left the current release
		}
		if _, err := t.r.activate(ctx, t.prev, t.aside, ev, reasonRollback); err != nil {
			t.rollbackErr = err
		}
	})
	ev := t.ev
	ev.Phase = hooks.PhaseAfter
	a, err := t.r.activate(ctx, t.id, "", ev, reasonInstall)
	t.switched, t.aside = a.switched, a.aside
	select {
	case <-t.lost:
		t.logger.Warn("lost the fleet slot after the switch; finishing the update")
	default:
	}
	return err
}

// check runs the health checks of the new release.
func (t *txn) check(ctx context.Context) error {
	ev := t.ev
	ev.Phase = hooks.PhaseCheck
	return t.r.runChain(ctx, t.r.svc.Checks, ev)
}

// commit records the new release in the state; Runner.finish saves it.
func (t *txn) commit() Outcome {
	now := t.r.now()
	d := now.Sub(t.start)
	rel := Release{ID: t.id, Checksum: t.sum, MD5: t.sums.MD5, SHA256: t.sums.SHA256, VersionID: t.info.VersionID,
		Source: t.info.Key, Installed: now.UTC()}
	if c := t.claims; c != nil {
		rel.Signed = &Signed{KeyID: fmt.Sprintf("%016X", c.KeyID), Time: c.Time, Version: c.Version, Publisher: c.Publisher}
	}
	t.st.installed(rel, Attempt{Time: t.start.UTC(), Checksum: t.sum, Release: t.id, Result: "success", Duration: d})
	t.st.trim(t.r.svc.KeepReleases, t.r.lay.current())
	ev := t.ev
	ev.Phase, ev.Result, ev.Duration = hooks.PhaseAfter, "success", d
	return Outcome{Result: ResultInstalled, Checksum: t.sum, Release: t.id, Watched: t.watched, announce: &ev}
}

// fail undoes what the steps did, newest first, and decides in one place
// what the failure was: the release's (failed, counted, announced) or the
// circumstances' (error: shutdown, a lost slot, the artifact changed).
func (t *txn) fail(ctx context.Context, phase Phase, err error) Outcome {
	undoCtx := context.WithoutCancel(ctx)
	if t.switched {
		t.logger.Error("update failed after the switch; rolling back", "phase", phase, "error", err)
	}
	for i := len(t.undo) - 1; i >= 0; i-- {
		t.undo[i](undoCtx)
	}
	if t.rollbackErr != nil {
		err = fmt.Errorf("%w; and the rollback failed: %v", err, t.rollbackErr)
	}
	cause := context.Cause(ctx)
	switch {
	case errors.Is(err, artifact.ErrChanged):
		return Outcome{Result: ResultError, Checksum: t.sum, Phase: PhaseDownload, Err: err}
	case errors.Is(err, errLost):
		return Outcome{Result: ResultError, Checksum: t.sum, Phase: PhaseLock, Err: err}
	case errors.Is(err, fleet.ErrUnavailable) || errors.Is(err, errOnceWait):
		// A run-once hook whose fleet could not be reached, or whose
		// runner took too long: this host's trouble, not the release's.
		return Outcome{Result: ResultError, Checksum: t.sum, Phase: phase, Err: err}
	case !t.switched && ctx.Err() != nil && !errors.Is(cause, errUpdateTimeout):
		// Shutting down, not the release's fault: abandoned, not failed.
		if !errors.Is(err, ErrAbandoned) {
			err = fmt.Errorf("%w (%v): %w", ErrAbandoned, cause, err)
		}
		return Outcome{Result: ResultError, Checksum: t.sum, Phase: phase, Err: err}
	}
	if errors.Is(cause, errUpdateTimeout) && !errors.Is(err, errUpdateTimeout) {
		err = fmt.Errorf("%w (after %s): %w", errUpdateTimeout, t.r.svc.UpdateTimeout, err)
	}
	now := t.r.now()
	t.st.failed(Attempt{Time: t.start.UTC(), Checksum: t.sum, Release: t.id, Result: "failure",
		Phase: string(phase), Error: err.Error(), Duration: now.Sub(t.start)}, now.UTC())
	ev := t.ev
	ev.Phase, ev.Result, ev.Error, ev.Duration = string(phase), "failure", err.Error(), now.Sub(t.start)
	if t.switched {
		// The release was current for a while: what the world hears is
		// the rollback, to the release that is current again.
		ev.Phase, ev.Result = hooks.PhaseRollback, "rollback"
		ev.Hash, ev.PreviousHash, ev.Release, ev.ReleaseDir, ev.PreviousDir = t.st.Checksum, t.sum, t.prev, "", t.ev.ReleaseDir
		if t.prev != "" {
			ev.ReleaseDir = t.r.lay.releaseDir(t.prev)
		}
	}
	return Outcome{Result: ResultFailed, Checksum: t.sum, Release: t.id, Phase: phase, Err: err, announce: &ev, verified: t.verified}
}
