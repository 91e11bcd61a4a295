package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/lock"
	"github.com/dropshipd/dropship/lock/local"
)

// Results of one check.
const (
	ResultNoop       = "noop"       // nothing changed
	ResultSkipped    = "skipped"    // a change, deliberately not installed now
	ResultInstalled  = "installed"  // success
	ResultFailed     = "failed"     // nothing switched, or switched and rolled back
	ResultRolledBack = "rolledback" // operator rollback
	ResultError      = "error"      // could not check (store or lock unreachable)
)

// Phases a failure is attributed to (besides the hook phases).
const (
	PhaseStat      = "stat"
	PhaseLock      = "lock"
	PhasePreflight = "preflight"
	PhaseDownload  = "download"
	PhaseInstall   = "install"
	PhaseSwitch    = "switch"
)

// Outcome is what one check did.
type Outcome struct {
	Result   string
	Checksum string
	Release  string
	Phase    string
	Reason   string // why skipped
	Err      error
	Duration time.Duration
}

// Fleet is what a runner asks and tells the rest of the fleet (Consul);
// nil on a single host.
type Fleet interface {
	// Blocked returns why service must not start installing checksum now
	// (a hold, or a breaker another host tripped), or "".
	Blocked(ctx context.Context, service, checksum string) (string, error)
	// Trip marks checksum as failed for the whole fleet.
	Trip(ctx context.Context, service, checksum, phase string, cause error) error
	// Report writes this host's status after an attempt.
	Report(ctx context.Context, service string, st fleet.NodeStatus) error
}

// Runner checks and updates one service.
type Runner struct {
	svc    *Service
	node   string
	lay    layout
	local  *local.Flock   // one agent per service per host
	sem    lock.Semaphore // fleet slots, when sequential
	fleet  Fleet
	logger *slog.Logger
	now    func() time.Time

	recovered sync.Once
	crash     func(point string) // tests: crash here
	obs       Observer
	mu        sync.Mutex
	status    Status
}

// NewRunner prepares the runner of svc under cfg.
func NewRunner(cfg *Config, svc *Service, fleet Fleet, logger *slog.Logger) (*Runner, error) {
	dir := filepath.Join(cfg.StatePath, svc.Name)
	r := &Runner{
		svc:    svc,
		node:   cfg.NodeName,
		lay:    layout{dir: dir, dest: svc.Destination},
		local:  local.NewFlock(filepath.Join(dir, "lock")),
		fleet:  fleet,
		logger: logger.With("service", svc.Name),
		now:    time.Now,
	}
	if svc.Sequential {
		sem, err := cfg.Lock.Semaphore(svc.Name, svc.Concurrency)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.Name, err)
		}
		r.sem = sem
	}
	r.status.Service = svc.Name
	return r, nil
}

// Service returns the configuration the runner works for.
func (r *Runner) Service() *Service { return r.svc }

// Dir is the service's state directory.
func (r *Runner) Dir() string { return r.lay.dir }

// Check looks at the artifact once and installs it if it changed.
func (r *Runner) Check(ctx context.Context) (out Outcome) {
	start := r.now()
	var st *State
	defer func() {
		out.Duration = r.now().Sub(start)
		r.noteCheck(out, st)
		if r.obs != nil {
			r.obs.Checked(r.svc.Name, out)
		}
	}()
	if _, err := r.local.Acquire(ctx); err != nil {
		return Outcome{Result: ResultError, Phase: PhaseLock, Err: err}
	}
	defer r.local.Release(context.WithoutCancel(ctx))

	var rerr error
	r.recovered.Do(func() { rerr = r.recover() })
	if rerr != nil {
		return Outcome{Result: ResultError, Phase: PhaseInstall, Err: rerr}
	}
	st, err := LoadState(r.lay.dir, r.svc.Name)
	if err != nil {
		return Outcome{Result: ResultError, Phase: PhaseInstall, Err: err}
	}
	lastError := st.LastError
	defer func() {
		st.LastError = ""
		if out.Err != nil {
			st.LastError = out.Err.Error()
		}
		// A check that found nothing to do and no new error leaves the
		// state file alone: no write and no fsync every interval.
		if (out.Result == ResultNoop || out.Result == ResultSkipped) && st.LastError == lastError {
			return
		}
		st.LastCheck = r.now().UTC()
		if err := st.Save(r.lay.dir); err != nil && out.Err == nil {
			out = Outcome{Result: ResultError, Phase: PhaseInstall, Err: err}
		}
	}()

	// An artifact that changes again while it downloads is started over,
	// a few times, never installed as a mix.
	for attempt := 0; ; attempt++ {
		out = r.check(ctx, st)
		if !errors.Is(out.Err, artifact.ErrChanged) || attempt >= 3 || ctx.Err() != nil {
			return out
		}
		r.logger.Info("artifact changed during the update; starting over", "checksum", out.Checksum)
	}
}

func (r *Runner) check(ctx context.Context, st *State) Outcome {
	info, stop := r.look(ctx, st)
	if stop != nil {
		return *stop
	}
	if r.sem == nil {
		return r.install(ctx, make(<-chan struct{}), st, info)
	}
	r.setWaiting(true)
	lost, err := r.sem.Acquire(ctx)
	r.setWaiting(false)
	if err != nil {
		return Outcome{Result: ResultError, Phase: PhaseLock, Checksum: info.Checksum(), Err: fmt.Errorf("take a slot: %w", err)}
	}
	r.setHolding(true)
	success := false
	defer func() {
		if success && r.svc.Hold > 0 {
			r.logger.Info("holding the slot for the bake time", "hold", r.svc.Hold)
			select {
			case <-time.After(r.svc.Hold):
			case <-ctx.Done():
			case <-lost:
			}
		}
		if err := r.sem.Release(context.WithoutCancel(ctx)); err != nil {
			r.logger.Warn("releasing the slot", "error", err)
		}
		r.setHolding(false)
	}()
	// The world may have moved while we waited: look again.
	if info, stop = r.look(ctx, st); stop != nil {
		return *stop
	}
	out := r.install(ctx, lost, st, info)
	success = out.Result == ResultInstalled
	return out
}

// look stats the artifact and decides whether to go on: not when nothing
// changed, the checksum is to be skipped, or the fleet holds it back.
func (r *Runner) look(ctx context.Context, st *State) (artifact.Info, *Outcome) {
	info, err := r.svc.Source.Stat(ctx)
	if err != nil {
		return info, &Outcome{Result: ResultError, Phase: PhaseStat, Err: err} // sources name themselves
	}
	if skip := r.skip(st, info); skip != nil {
		return info, skip
	}
	if r.fleet == nil {
		return info, nil
	}
	sum := info.Checksum()
	reason, err := r.fleet.Blocked(ctx, r.svc.Name, sum)
	if err != nil {
		return info, &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: err}
	}
	if reason != "" {
		return info, &Outcome{Result: ResultSkipped, Checksum: sum, Reason: reason}
	}
	return info, nil
}

// skip decides, without the network, whether info needs no install now.
func (r *Runner) skip(st *State, info artifact.Info) *Outcome {
	sum := info.Checksum()
	switch {
	case sum == st.Checksum && r.lay.current() == st.Release:
		return &Outcome{Result: ResultNoop, Checksum: sum, Release: st.Release}
	case sum == st.RolledBackFrom:
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rolled back from this checksum; waiting for a new one"}
	}
	if f := st.Failures[sum]; f != nil {
		if wait := r.failureBackoff(f.Count); r.now().Before(f.Last.Add(wait)) {
			return &Outcome{Result: ResultSkipped, Checksum: sum,
				Reason: fmt.Sprintf("failed %d time(s) in %s: %s; next try after %s", f.Count, f.Phase, f.Error, f.Last.Add(wait).Format(time.RFC3339))}
		}
	}
	return nil
}

// failureBackoff is how long a failed checksum waits before another try.
func (r *Runner) failureBackoff(count int) time.Duration {
	base := max(r.svc.CheckInterval, 30*time.Second)
	d := base << min(count-1, 10)
	return min(d, time.Hour)
}

var errLost = errors.New("lost the fleet slot before the switch; update abandoned")

func (r *Runner) install(ctx context.Context, lost <-chan struct{}, st *State, info artifact.Info) (out Outcome) {
	updating.Add(1)
	defer updating.Add(-1)
	start := r.now()
	sum := info.Checksum()
	logger := r.logger.With("checksum", sum)
	if info.ChecksumFrom != "" && info.ChecksumFrom != "content" {
		logger.Info("checksum source", "from", info.ChecksumFrom)
	}
	prev := st.Release
	if r.lay.current() != prev {
		// Destination moved outside dropship, or an interrupted update:
		// roll back to what was running before this update, whatever it is.
		prev = r.lay.current()
		if _, known := st.release(prev); !known {
			prev = st.Release
		}
	}
	id := r.lay.newID(sum, start)
	ev := hooks.Event{
		Name: r.svc.Name, Hostname: r.node, Hash: sum, PreviousHash: st.Checksum,
		Release: id, ReleaseDir: r.lay.releaseDir(id), Time: start,
	}
	if prev != "" {
		ev.PreviousDir = r.lay.releaseDir(prev)
	}
	fail := func(phase string, err error, switched bool) Outcome {
		if !switched && ctx.Err() != nil {
			// Shutting down, not the release's fault: abandoned, not failed.
			return Outcome{Result: ResultError, Checksum: sum, Phase: phase,
				Err: fmt.Errorf("update abandoned before the switch (%v): %w", context.Cause(ctx), err)}
		}
		o := Outcome{Result: ResultFailed, Checksum: sum, Release: id, Phase: phase, Err: err}
		r.recordFailure(ctx, st, o, start)
		if !switched {
			fev := ev
			fev.Phase, fev.Result, fev.Error, fev.Duration = phase, "failure", err.Error(), r.now().Sub(start)
			r.announce(ctx, fev, logger)
		}
		return o
	}
	logger.Info("installing", "release", id, "from", info.Key, "size", info.Size)

	if err := r.preflight(info); err != nil {
		return fail(PhasePreflight, err, false)
	}
	stage := filepath.Join(r.lay.staging(), id)
	defer os.RemoveAll(stage) // gone once promoted; cleaned on any failure
	if err := r.download(ctx, info, stage); err != nil {
		if errors.Is(err, artifact.ErrChanged) {
			return Outcome{Result: ResultError, Checksum: sum, Phase: PhaseDownload, Err: err}
		}
		if ctx.Err() != nil {
			return Outcome{Result: ResultError, Checksum: sum, Phase: PhaseDownload, Err: err}
		}
		return fail(PhaseDownload, err, false)
	}
	if err := abandoned(ctx, lost); err != nil {
		return Outcome{Result: ResultError, Checksum: sum, Phase: PhaseLock, Err: err}
	}

	// Once the before hooks have run (say, `systemctl stop api`), an
	// update that stops short of the switch brings the current release
	// back by running its after hooks: never a stopped service left behind.
	restore := func(why error) {
		if prev == "" {
			return
		}
		rev := ev
		rev.Phase, rev.Result, rev.Error = hooks.PhaseRollback, "rollback", why.Error()
		rev.Hash, rev.PreviousHash, rev.Release, rev.ReleaseDir, rev.PreviousDir = st.Checksum, sum, prev, r.lay.releaseDir(prev), ""
		logger.Warn("update stopped after its before hooks; starting the current release again", "release", prev, "error", why)
		if err := r.runChain(context.WithoutCancel(ctx), r.svc.After, rev, logger); err != nil {
			logger.Error("could not start the current release again", "release", prev, "error", err)
		}
	}
	ev.Phase = hooks.PhaseBefore
	if err := r.runChain(ctx, r.svc.Before, ev, logger); err != nil {
		restore(err)
		return fail(hooks.PhaseBefore, err, false)
	}
	if err := os.MkdirAll(r.lay.releases(), 0o755); err != nil {
		restore(err)
		return fail(PhaseInstall, err, false)
	}
	r.crashPoint("verified")
	if err := os.Rename(stage, r.lay.releaseDir(id)); err != nil {
		restore(err)
		return fail(PhaseInstall, fmt.Errorf("promote release: %w", err), false)
	}
	if err := abandoned(ctx, lost); err != nil {
		os.RemoveAll(r.lay.releaseDir(id))
		restore(err)
		return Outcome{Result: ResultError, Checksum: sum, Phase: PhaseLock, Err: err}
	}
	movedAside, err := r.lay.switchTo(id, logger)
	if err != nil {
		os.RemoveAll(r.lay.releaseDir(id))
		restore(err)
		return fail(PhaseSwitch, err, false)
	}
	logger.Info("switched", "release", id, "destination", r.svc.Destination)
	r.crashPoint("switched")
	// From here the update finishes even if the agent is told to stop:
	// the hooks that start the new release must run. Their own timeouts
	// bound this.
	ctx = context.WithoutCancel(ctx)
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-lost:
			logger.Warn("lost the fleet slot after the switch; finishing the update")
		case <-finished:
		}
	}()

	ev.Phase = hooks.PhaseAfter
	failPhase, ferr := hooks.PhaseAfter, r.runChain(ctx, r.svc.After, ev, logger)
	if ferr == nil {
		ev.Phase = hooks.PhaseCheck
		failPhase, ferr = hooks.PhaseCheck, r.runChain(ctx, r.svc.Checks, ev, logger)
	}
	if ferr != nil {
		logger.Error("update failed after the switch; rolling back", "phase", failPhase, "error", ferr)
		ev.Error, ev.Duration = ferr.Error(), r.now().Sub(start)
		rbErr := r.rollbackTo(ctx, prev, movedAside, ev, logger)
		os.RemoveAll(r.lay.releaseDir(id))
		if rbErr != nil {
			ferr = fmt.Errorf("%w; and the rollback failed: %v", ferr, rbErr)
		}
		return fail(failPhase, ferr, true)
	}

	st.Checksum, st.SHA256, st.VersionID, st.Release = sum, info.SHA256, info.VersionID, id
	if st.RolledBackFrom != "" && st.RolledBackFrom != sum {
		st.RolledBackFrom = ""
	}
	delete(st.Failures, sum)
	st.Releases = append(st.Releases, Release{ID: id, Checksum: sum, SHA256: info.SHA256,
		VersionID: info.VersionID, Source: info.Key, Installed: r.now().UTC()})
	out = Outcome{Result: ResultInstalled, Checksum: sum, Release: id, Duration: r.now().Sub(start)}
	st.record(Attempt{Time: start.UTC(), Checksum: sum, Release: id, Result: "success", Duration: out.Duration})
	if err := st.Save(r.lay.dir); err != nil {
		return Outcome{Result: ResultError, Checksum: sum, Release: id, Phase: PhaseInstall, Err: err}
	}
	r.lay.prune(st, r.svc.KeepReleases, logger)
	r.report(ctx, st, out)
	ev.Phase, ev.Result, ev.Duration = hooks.PhaseAfter, "success", out.Duration
	r.announce(ctx, ev, logger)
	logger.Info("installed", "release", id, "duration", out.Duration.Round(time.Millisecond))
	// The agent idles between updates: give the buffers of this one back
	// to the system now rather than holding them until the next.
	debug.FreeOSMemory()
	return out
}

func (r *Runner) crashPoint(p string) {
	if r.crash != nil {
		r.crash(p)
	}
}

func abandoned(ctx context.Context, lost <-chan struct{}) error {
	select {
	case <-lost:
		return errLost
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("update abandoned before the switch: %w", context.Cause(ctx))
	}
	return nil
}

func (r *Runner) preflight(info artifact.Info) error {
	if err := os.MkdirAll(r.lay.staging(), 0o755); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if r.svc.DiskFactor <= 0 || info.Size <= 0 {
		return nil
	}
	free, err := freeBytes(r.lay.staging())
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	need := uint64(r.svc.DiskFactor * float64(info.Size))
	if free < need {
		return fmt.Errorf("preflight: %d bytes free under %s, need %d (%.1f × the %d-byte artifact; set disk_space_factor to change)",
			free, r.lay.dir, need, r.svc.DiskFactor, info.Size)
	}
	return nil
}

// download streams the pinned artifact through the verifier into the
// unpacker, retrying transient failures with backoff and jitter. Nothing
// in stage is trusted until the verifier has seen the last byte.
func (r *Runner) download(ctx context.Context, info artifact.Info, stage string) error {
	const attempts = 4
	var err error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			wait := time.Duration(250<<i) * time.Millisecond
			wait += time.Duration(rand.Int64N(int64(wait / 2)))
			r.logger.Warn("download failed; retrying", "error", err, "in", wait.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return err
			case <-time.After(wait):
			}
		}
		err = r.downloadOnce(ctx, info, stage)
		if err == nil || ctx.Err() != nil || errors.Is(err, artifact.ErrChanged) ||
			artifact.Permanent(err) || (errors.Is(err, archive.ErrRefused) && !errors.Is(err, artifact.ErrCorrupt)) {
			return err
		}
	}
	return err
}

func (r *Runner) downloadOnce(ctx context.Context, info artifact.Info, stage string) error {
	if err := os.RemoveAll(stage); err != nil {
		return err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return err
	}
	body, err := r.svc.Source.Open(ctx, info)
	if err != nil {
		return fmt.Errorf("download %s: %w", info.Key, err)
	}
	defer body.Close()
	v := artifact.NewVerifier(body, info)
	// Download and hashing on one core, decompression and unpacking on
	// the other; 4 × 64 KiB in flight at most.
	ahead := artifact.Prefetch(v, 64<<10, 4)
	defer ahead.Close()
	opt := r.svc.Unpack
	opt.Name = path.Base(strings.TrimRight(info.Key, "/"))
	opt.Spool = r.lay.staging()
	stats, xerr := archive.Extract(ctx, ahead, stage, opt)
	if xerr == nil {
		// The unpacker may stop before the end (tar padding, trailers):
		// the verifier must see every byte.
		_, xerr = io.Copy(io.Discard, ahead)
	}
	ahead.Close()
	// The verifier's verdict comes first: a truncated or corrupt download
	// explains any unpack error that follows from it.
	if verr := v.Drain(); verr != nil {
		return fmt.Errorf("download %s: %w", info.Key, verr)
	}
	if xerr != nil {
		return fmt.Errorf("unpack %s: %w", info.Key, xerr)
	}
	if err := syncFS(stage); err != nil {
		return fmt.Errorf("sync %s: %w", stage, err)
	}
	if r.obs != nil {
		r.obs.Downloaded(r.svc.Name, v.Size())
	}
	r.logger.Info("downloaded and verified", "format", stats.Format, "entries", stats.Entries,
		"bytes", stats.Bytes, "md5", v.MD5(), "sha256", v.SHA256())
	return nil
}

// runChain runs steps in order under their failure policies.
func (r *Runner) runChain(ctx context.Context, steps []hooks.Step, ev hooks.Event, logger *slog.Logger) error {
	for i, s := range steps {
		start := r.now()
		err := s.Hook.Run(ctx, ev)
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s hook %d (%s, %s): %w", ev.Phase, i+1, s.Kind, s.Range, err)
		if s.OnFailure == hooks.Continue {
			logger.Warn("hook failed; continuing", "phase", ev.Phase, "hook", s.Kind, "error", err,
				"duration", r.now().Sub(start).Round(time.Millisecond))
			continue
		}
		return err
	}
	return nil
}

// rollbackTo switches back to release prev (or to nothing, for a first
// install) and runs the after hooks for it, then the rollback chain.
func (r *Runner) rollbackTo(ctx context.Context, prev, movedAside string, failed hooks.Event, logger *slog.Logger) error {
	ev := failed
	ev.Phase, ev.Result = hooks.PhaseRollback, "rollback"
	ev.Hash, ev.PreviousHash = failed.PreviousHash, failed.Hash
	ev.Release, ev.ReleaseDir, ev.PreviousDir = prev, "", failed.ReleaseDir
	var err error
	if prev == "" {
		err = r.lay.unswitch(movedAside)
	} else {
		ev.ReleaseDir = r.lay.releaseDir(prev)
		_, err = r.lay.switchTo(prev, logger)
	}
	if err != nil {
		return fmt.Errorf("switch back: %w", err)
	}
	logger.Warn("rolled back", "release", prev)
	var errs []error
	if prev != "" {
		errs = append(errs, r.runChain(ctx, r.svc.After, ev, logger))
	}
	errs = append(errs, r.runChain(ctx, r.svc.Rollback, ev, logger))
	r.announce(ctx, ev, logger)
	return errors.Join(errs...)
}

// announce runs the reporting hooks with the outcome of an update. They
// only tell the world: a failure is logged, never fatal.
func (r *Runner) announce(ctx context.Context, ev hooks.Event, logger *slog.Logger) {
	ev.Time = r.now()
	for _, s := range r.svc.Report {
		if err := s.Hook.Run(ctx, ev); err != nil {
			logger.Warn("reporting hook failed", "hook", s.Kind, "result", ev.Result, "error", err)
		}
	}
}

func (r *Runner) recordFailure(ctx context.Context, st *State, o Outcome, start time.Time) {
	now := r.now().UTC()
	if st.Failures == nil {
		st.Failures = map[string]*Failure{}
	}
	f := st.Failures[o.Checksum]
	if f == nil {
		f = &Failure{First: now}
		st.Failures[o.Checksum] = f
	}
	f.Count++
	f.Last, f.Phase, f.Error = now, o.Phase, o.Err.Error()
	st.record(Attempt{Time: start.UTC(), Checksum: o.Checksum, Release: o.Release, Result: "failure",
		Phase: o.Phase, Error: o.Err.Error(), Duration: now.Sub(start)})
	r.logger.Error("update failed", "checksum", o.Checksum, "phase", o.Phase, "error", o.Err,
		"attempts", f.Count, "next_try_in", r.failureBackoff(f.Count))
	if r.fleet != nil && tripsBreaker(o) {
		if err := r.fleet.Trip(context.WithoutCancel(ctx), r.svc.Name, o.Checksum, o.Phase, o.Err); err != nil {
			r.logger.Error("could not mark the checksum failed for the fleet", "error", err)
		}
	}
	r.report(ctx, st, o)
}

// tripsBreaker says whether a failure is the release's fault, so that
// every host would meet it: hooks, checks, the install, a refused or
// corrupt archive. A full disk or a network error is this host's own.
func tripsBreaker(o Outcome) bool {
	switch o.Phase {
	case hooks.PhaseBefore, hooks.PhaseAfter, hooks.PhaseCheck, PhaseInstall, PhaseSwitch:
		return true
	case PhaseDownload:
		return errors.Is(o.Err, archive.ErrRefused) || errors.Is(o.Err, artifact.ErrCorrupt)
	}
	return false
}

func (r *Runner) report(ctx context.Context, st *State, o Outcome) {
	if r.fleet == nil {
		return
	}
	ns := fleet.NodeStatus{Node: r.node, Checksum: st.Checksum, Release: st.Release, Result: o.Result,
		Attempt: o.Checksum, Phase: o.Phase, Time: r.now().UTC()}
	if o.Err != nil {
		ns.Error = o.Err.Error()
	}
	if err := r.fleet.Report(context.WithoutCancel(ctx), r.svc.Name, ns); err != nil {
		r.logger.Warn("could not report node status", "error", err)
	}
}

// recover cleans what a crash left, once per process.
func (r *Runner) recover() error {
	if err := r.lay.recoverDisk(r.logger); err != nil {
		return err
	}
	st, err := LoadState(r.lay.dir, r.svc.Name)
	if err != nil {
		return err
	}
	if cur := r.lay.current(); cur != "" && cur != st.Release {
		if _, known := st.release(cur); !known {
			// Switched, then interrupted before the state was saved: the
			// release is whole but its after hooks may not have run. It is
			// installed again, hooks and all, by the next check.
			r.logger.Warn("found a release switched by an interrupted update; it will be installed again", "release", cur)
		}
	}
	return nil
}
