package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/archive"
	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/flock"
	"github.com/dropshipd/dropship/internal/trim"
	"github.com/dropshipd/dropship/lock"
)

// Result is what one check did.
type Result string

const (
	ResultNoop       Result = "noop"       // nothing changed
	ResultSkipped    Result = "skipped"    // a change, deliberately not installed now
	ResultInstalled  Result = "installed"  // success
	ResultFailed     Result = "failed"     // nothing switched, or switched and rolled back
	ResultRolledBack Result = "rolledback" // operator rollback
	ResultError      Result = "error"      // could not check or finish (store, lock, shutdown)
)

// Phase is the step of an update an outcome is attributed to.
type Phase string

const (
	PhaseStat      Phase = "stat"
	PhaseLock      Phase = "lock"
	PhasePreflight Phase = "preflight"
	PhaseDownload  Phase = "download"
	PhaseSignature Phase = "signature"
	PhaseBefore    Phase = hooks.PhaseBefore
	PhaseInstall   Phase = "install" // promote, and saving the state
	PhaseSwitch    Phase = "switch"
	PhaseAfter     Phase = hooks.PhaseAfter
	PhaseCheck     Phase = hooks.PhaseCheck
	PhaseRollback  Phase = hooks.PhaseRollback
)

// Outcome is what one check did.
type Outcome struct {
	Result   Result
	Checksum string
	Release  string
	Phase    Phase
	Reason   string // why skipped
	Err      error
	Duration time.Duration
	// Until, when set, is when a waiting rollout should be looked at
	// again (a bake's end, a window's opening); rollout says the check
	// waits on the rollout, so a change in the fleet should wake it.
	Until time.Time
	// Watched: how long the release's health was watched after the
	// switch, the whole window without a failure.
	Watched time.Duration
	rollout bool
	// verified: the checksum is one this host computed over the bytes it
	// fetched, not only what the store claims (see tripsBreaker).
	verified bool
	// restage: the artifact changed over the staged release while the
	// host waited for its slot; the check starts over, staging it.
	restage bool

	// announce is the event the reporting hooks get once the state is
	// saved; nil when there is nothing to tell.
	announce *hooks.Event
}

// Runner checks and updates one service.
type Runner struct {
	svc   *Service
	node  string
	lay   layout
	local *flock.Lock     // one agent per service per host
	sem   fleet.Semaphore // fleet slots, when sequential
	fleet fleet.Agent
	// records are the fleet's shared records a rollout plans from.
	records fleet.Operator
	logger  *slog.Logger
	now     func() time.Time

	tags    []string         // node_tags
	decider *rollout.Decider // the service's rollout, or nil
	coord   lock.Coordinated // the slots, when their coordinator decides the rollout
	granted bool             // rolloutAgain: the slot is held
	// slotFor is the release the slot held was asked for (the want the
	// coordinator granted): a wave "in line" counts as open only for it.
	slotFor string
	// fresh is this host's share of the records (Brief) as the step
	// before read them in this pass, for the next step: with a
	// coordinator, one read per look serves the hold, the breaker and
	// the rollout's checks alike.
	fresh        *fleet.Status
	registeredAt time.Time // when this process found or wrote its node record
	registered   bool      // this host's node record has its tags and policy

	// unsaved is a state finish could not write (a full disk, say), and
	// unsavedOver the bytes of the file it should have replaced: until
	// it is written, it, not the file, is what the service has installed.
	unsaved     *State
	unsavedOver []byte

	// recovered is set once recover has run to its end: a recovery that
	// failed (a full disk, a file that cannot be removed) runs again at
	// the next check instead of being taken as done.
	// deferral is the update the application defers, if any.
	deferral deferring
	// staged is the release staged ahead of its slot, if any (stage.go).
	staged *txn

	rest rest // whether a check may skip the records (rest.go)

	recoverMu sync.Mutex
	recovered bool
	crash     func(point string) // tests: crash here
	obs       Observer
	updating  *atomic.Int32 // the agent's count of updates in progress; nil without an agent
	mu        sync.Mutex
	status    Status
}

// NewRunner prepares the runner of svc under cfg.
func NewRunner(cfg *Config, svc *Service, logger *slog.Logger) (*Runner, error) {
	dir := filepath.Join(cfg.StatePath, svc.Name)
	r := &Runner{
		svc:    svc,
		node:   cfg.NodeName,
		lay:    layout{dir: dir, dest: svc.Destination},
		local:  flock.New(filepath.Join(dir, "lock")),
		fleet:  cfg.Fleet,
		logger: logger.With("service", svc.Name),
		now:    time.Now,
		tags:   cfg.NodeTags,
		rest:   rest{engage: make(chan struct{}, 1)},
	}
	if r.fleet == nil {
		return nil, fmt.Errorf("service %s: no lock: the config names none and the build has no \"local\" one", svc.Name)
	}
	if svc.Rollout != nil {
		r.decider = rollout.NewDecider(svc.Rollout)
		shared, err := fleet.Shared(r.fleet)
		if err != nil {
			return nil, fmt.Errorf("service %s: a rollout plans from the fleet's records: %w", svc.Name, err)
		}
		r.records = shared
	}
	if svc.Sequential {
		sem, err := r.fleet.Semaphore(svc.Name, svc.Concurrency)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.Name, err)
		}
		r.sem = sem
		if c, ok := sem.(lock.Coordinated); ok && r.decider != nil {
			// The coordinator decides the waves: this host reads its
			// document and its own wave, never every host's record.
			r.coord = c
			c.SetPlanner(r.planner())
		}
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
	st, _, stop := r.open(ctx)
	if stop != nil {
		return *stop
	}
	defer r.local.Release(context.WithoutCancel(ctx))
	// An artifact that changes again while it downloads is started over,
	// a few times, never installed as a mix.
	for attempt := 0; ; attempt++ {
		out = r.update(ctx, st)
		if !errors.Is(out.Err, artifact.ErrChanged) && !out.restage || attempt >= 3 || ctx.Err() != nil {
			return out
		}
		r.logger.Info("artifact changed during the update; starting over", "checksum", out.Checksum)
	}
}

// open takes the host lock of the service, cleans what a crash left (once
// per process), reads the state and completes a switch back a crash
// interrupted, which it returns. On success the caller releases the lock.
func (r *Runner) open(ctx context.Context) (*State, *SwitchBack, *Outcome) {
	if _, err := r.local.Acquire(ctx); err != nil {
		return nil, nil, &Outcome{Result: ResultError, Phase: PhaseLock, Err: err}
	}
	err := r.recoverOnce()
	var st *State
	if err == nil {
		st, err = r.loadState()
	}
	if err != nil {
		r.local.Release(context.WithoutCancel(ctx))
		return nil, nil, &Outcome{Result: ResultError, Phase: PhaseInstall, Err: err}
	}
	var resumed *SwitchBack
	if st.SwitchBack != nil {
		resumed = r.resume(ctx, st)
	}
	return st, resumed, nil
}

// loadState reads the state; a state the last finish could not write is
// written now and used instead, unless the file changed since (another
// process, `dropship rollback`, wrote it).
func (r *Runner) loadState() (*State, error) {
	if st := r.unsaved; st != nil {
		b, err := os.ReadFile(statePath(r.lay.dir))
		if errors.Is(err, fs.ErrNotExist) {
			b, err = nil, nil
		}
		if err == nil && string(b) == string(r.unsavedOver) {
			if err := st.Save(r.lay.dir); err != nil {
				r.logger.Error("still cannot save the state", "error", err)
				return st, nil
			}
			r.logger.Info("saved the state an earlier check could not")
			r.unsaved, r.unsavedOver = nil, nil
			return st, nil
		}
		r.logger.Warn("the state file changed since a check could not save the state; what it held is dropped")
		r.unsaved, r.unsavedOver = nil, nil
	}
	return LoadState(r.lay.dir, r.svc.Name)
}

// update is one pass: the rollout decides (rolloutFirst: install, switch
// to a pin's release, revert, or stop here), act carries the decision
// out, and finish ends it: once, inside the slot, so the fleet hears of a
// failure before the next host may start. What the pass holds (the slot,
// the application's lock file) is released after finish.
func (r *Runner) update(ctx context.Context, st *State) (out Outcome) {
	r.fresh = nil
	defer func() { r.fresh = nil }()
	var h held
	defer func() { h.release(out) }()
	return r.finish(ctx, st, r.act(ctx, st, &h))
}

// held is what a pass holds until its outcome is finished, each a
// release, run last first.
type held []func(Outcome)

func (h *held) add(release func(Outcome)) { *h = append(*h, release) }

func (h held) release(out Outcome) {
	for i := len(h) - 1; i >= 0; i-- {
		h[i](out)
	}
}

// act carries out the rollout's decision up to the pass's outcome, which
// it leaves to finish: for an install stat, gate, slot, then the
// transaction; for a pin or a revert the slot and the switch back.
func (r *Runner) act(ctx context.Context, st *State, h *held) Outcome {
	d := decision{do: reasonInstall}
	if r.decider != nil {
		if r.rest.quiet(r.now()) {
			if out, done := r.restLook(ctx, st); done {
				return out
			}
		}
		d = r.rolloutFirst(ctx, st)
	}
	switch {
	case d.stop != nil:
		return *d.stop
	case d.do != reasonInstall:
		return r.switchFor(ctx, st, d, h)
	}
	info, stop := r.look(ctx, st)
	r.fresh = nil // read before the slot: the look once it is held reads again
	if stop == nil && r.decider != nil {
		stop = r.rolloutGate(ctx, d.view, info)
	}
	r.keepStaged(info, stop)
	if stop != nil {
		return *stop
	}
	// Staged before any deferral and before the slot: only the hooks,
	// the switch and the checks hold it.
	if stop := r.stageAhead(ctx, st, info); stop != nil {
		return *stop
	}
	if r.svc.Defer != nil {
		// Asked before the slot is taken, so a deferring host holds no
		// slot; asked again once it is held, and the lock file kept.
		release, stop := r.mayStart(ctx, st, info.Checksum())
		if stop != nil {
			return *stop
		}
		if r.sem != nil {
			release()
		} else {
			h.add(func(Outcome) { release() })
		}
	}
	lost := make(<-chan struct{})
	if r.sem != nil {
		if lost, stop = r.takeSlot(ctx, info.Checksum(), h); stop != nil {
			return *stop
		}
		// The world may have moved while we waited: look again.
		if info, stop = r.look(ctx, st); stop != nil {
			r.keepStaged(info, stop)
			return *stop
		}
		if r.staged != nil && !sameRelease(r.staged.info, info) {
			// Published over the staged release: it is dropped, never
			// installed, and the slot given back while the new one is
			// staged.
			r.dropStaged("a newer release was published over it while the host waited for a slot")
			return Outcome{Result: ResultSkipped, Checksum: info.Checksum(),
				Reason: "a newer release was published over the staged one", restage: true}
		}
		if r.decider != nil {
			if stop = r.rolloutAgain(ctx, info); stop != nil {
				return *stop
			}
		}
		if r.svc.Defer != nil {
			release, stop := r.mayStart(ctx, st, info.Checksum())
			if stop != nil {
				return *stop
			}
			h.add(func(Outcome) { release() })
		}
	}
	if r.updating != nil {
		r.updating.Add(1)
		h.add(func(Outcome) { r.updating.Add(-1) })
	}
	// What start-up and the checks touched of the program is not what an
	// install runs: drop it, so the peak of an install holds only its own.
	trim.Text()
	tctx, cancel := context.WithTimeoutCause(ctx, r.svc.UpdateTimeout, errUpdateTimeout)
	defer cancel()
	t := r.takeStaged(st, info, lost)
	if t == nil {
		t = r.begin(st, info, lost)
	}
	if r.sem != nil {
		t.held = r.slotHeld()
	}
	return t.run(tctx)
}

// switchFor carries out a pin's or a revert's decision: in a slot when
// the service takes turns, and only if the rollout, asked again once the
// slot is held, still says so; then the switch back to the kept release.
func (r *Runner) switchFor(ctx context.Context, st *State, d decision, h *held) Outcome {
	if r.sem != nil {
		sum := st.Checksum
		if d.do == reasonPin {
			sum = d.target.Checksum
		}
		lost, stop := r.takeSlot(ctx, sum, h)
		if stop != nil {
			return *stop
		}
		if stop := r.switchStill(ctx, st, d); stop != nil {
			return *stop
		}
		// As for an install: a slot lost before the switch may be
		// another host's now; the next check takes one again.
		held := r.slotHeld()
		select {
		case <-lost:
			held = func() bool { return false }
		default:
		}
		if held != nil && !held() {
			return Outcome{Result: ResultError, Phase: PhaseLock, Checksum: st.Checksum,
				Err: fmt.Errorf("switch to %s (%s): %w", d.target.ID, d.do, errLost)}
		}
	}
	if d.do == reasonPin {
		r.logger.Warn("switching to the pinned release", "release", d.target.ID, "reason", d.words)
	} else {
		b := d.breaker
		r.logger.Warn("fleet revert: the breaker tripped on the installed checksum; switching back",
			"checksum", b.Checksum, "failed_on", b.Node, "phase", b.Phase, "to", d.target.ID)
	}
	out, err := r.switchBack(ctx, st, d.target, d.do, d.words)
	switch {
	case err == nil:
		return out
	case d.do == reasonPin && errors.Is(err, signature.ErrRevokedKey):
		return Outcome{Result: ResultSkipped, Checksum: st.Checksum, Reason: d.words + "; this host stays where it is: " + err.Error()}
	case d.do == reasonPin:
		return Outcome{Result: ResultError, Phase: PhaseInstall, Checksum: st.Checksum, Err: fmt.Errorf("switch to the pinned %s: %w", d.target.ID, err)}
	}
	return Outcome{Result: ResultError, Phase: PhaseInstall, Checksum: st.Checksum, Err: fmt.Errorf("fleet revert to %s: %w", d.target.ID, err)}
}

// eventReporter writes a host's status and its events in one request
// (fleet/consul).
type eventReporter interface {
	ReportEvents(ctx context.Context, service string, st fleet.NodeStatus, evs []fleet.Event) error
}

// report tells the fleet this host's status and the events of the
// outcome it tells of: in one request where the fleet can, else the
// audit log first. Either way whoever sees the node status (a dashboard,
// fleet status) finds its events already written. It returns an error
// when the status was not written (wrapping fleet.ErrEventsWritten when
// its events were): events it could not write are logged (as record
// does), and the status still counts as told.
func (r *Runner) report(ctx context.Context, ns fleet.NodeStatus, evs []fleet.Event) error {
	if f, ok := r.fleet.(eventReporter); ok {
		err := f.ReportEvents(ctx, r.svc.Name, ns, evs)
		if err == nil {
			return nil
		}
		kinds := make([]string, len(evs))
		for i, ev := range evs {
			kinds[i] = ev.Kind
		}
		if errors.Is(err, fleet.ErrStatusWritten) {
			r.logger.Warn("could not record the event in the audit log", "kind", strings.Join(kinds, ","), "checksum", ns.Attempt, "error", err)
			return nil
		}
		r.logger.Warn("could not report node status", "result", ns.Result, "kind", strings.Join(kinds, ","), "checksum", ns.Attempt, "error", err)
		return err
	}
	for _, ev := range evs {
		r.record(ctx, ev)
	}
	err := r.fleet.Report(ctx, r.svc.Name, ns)
	if err != nil {
		r.logger.Warn("could not report node status", "error", err)
	}
	return err
}

// record appends ev to the service's audit log. The log tells operators
// what happened; failing to write it never changes what the update did,
// so a failure is logged, with the event, and the agent goes on.
func (r *Runner) record(ctx context.Context, ev fleet.Event) {
	if err := r.fleet.Record(ctx, r.svc.Name, ev); err != nil {
		r.logger.Warn("could not record the event in the audit log", "kind", ev.Kind, "checksum", ev.Checksum, "error", err)
	}
}

// look stats the artifact and gates it: not when nothing changed, the
// checksum is to be skipped, or the fleet holds it back.
func (r *Runner) look(ctx context.Context, st *State) (artifact.Info, *Outcome) {
	info, err := r.svc.Source.Stat(ctx)
	if err != nil {
		return info, &Outcome{Result: ResultError, Phase: PhaseStat, Err: err} // sources name themselves
	}
	if skip := r.skip(st, info); skip != nil {
		return info, skip
	}
	sum := info.Checksum()
	reason, err := r.blocked(ctx, sum)
	if err != nil {
		return info, &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: err}
	}
	if reason != "" {
		return info, &Outcome{Result: ResultSkipped, Checksum: sum, Reason: reason}
	}
	return info, nil
}

// blocked returns why no update of sum may start: a hold, or a breaker.
// With a coordinator it reads this host's share of the records (Brief),
// or takes them as the step before read them in this pass, and leaves
// them for the rollout's checks that follow: one read, not two.
func (r *Runner) blocked(ctx context.Context, sum string) (string, error) {
	if _, ok := r.records.(briefer); !ok || r.coord == nil {
		return r.fleet.Blocked(ctx, r.svc.Name, sum)
	}
	view, err := r.ownRecords(ctx)
	if err != nil {
		return "", err
	}
	r.fresh = &view
	if h := view.Hold; h != nil {
		return fmt.Sprintf("on hold since %s by %s: %s", h.Time.Format(time.RFC3339), h.Who, h.Reason), nil
	}
	if b := view.Breaker(sum); b != nil {
		return fmt.Sprintf("checksum %s failed on %s in %s: %s (lift with `dropship fleet clear %s %s`)",
			sum, b.Node, b.Phase, b.Error, r.svc.Name, sum), nil
	}
	return "", nil
}

// skip decides, without the network, whether info needs no install now.
func (r *Runner) skip(st *State, info artifact.Info) *Outcome {
	sum := info.Checksum()
	switch {
	case r.installed(st, info):
		return &Outcome{Result: ResultNoop, Checksum: sum, Release: st.Release}
	case sum == st.Checksum && r.lay.current() == st.Release && st.Release != "":
		// Its directory was removed by hand: the destination points
		// nowhere. The release is installed again.
		r.logger.Warn("the current release's directory is gone; installing it again", "release", st.Release)
	case sum == st.RolledBackFrom:
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rolled back from this checksum; waiting for a new one"}
	}
	if f := st.Failures[sum]; f != nil {
		// A failure dated further ahead than its back-off was recorded by
		// a clock since set back: it would hold the checksum until the
		// clock caught up, not for the back-off. It is tried again.
		now := r.now()
		if wait := r.failureBackoff(f.Count); now.Before(f.Last.Add(wait)) && f.Last.Before(now.Add(wait)) {
			return &Outcome{Result: ResultSkipped, Checksum: sum,
				Reason: fmt.Sprintf("failed %d time(s) in %s: %s; next try after %s", f.Count, f.Phase, f.Error, f.Last.Add(wait).Format(time.RFC3339))}
		}
	}
	return nil
}

// installed says whether info is the release installed and current.
func (r *Runner) installed(st *State, info artifact.Info) bool {
	return info.Checksum() == st.Checksum && r.lay.current() == st.Release && r.lay.present(st.Release)
}

// failureBackoff is how long a failed checksum waits before another try.
func (r *Runner) failureBackoff(count int) time.Duration {
	base := max(r.svc.CheckInterval, 30*time.Second)
	d := base << min(count-1, 10)
	return min(d, time.Hour)
}

// FollowInLine is how long a host waits in line before it follows the
// coordinator (takeSlot; bench-scale's hosts too): 20 to 40 s, at
// random. A fleet gets in line together at a release; following in
// step, every host would send its reads of the document in the same
// instant, in the middle of the rollout.
func FollowInLine() time.Duration {
	const after = 20 * time.Second
	return after + rand.N(after)
}

// slot is a held place in the fleet semaphore.
type slot struct {
	r    *Runner
	lost <-chan struct{}
}

// takeSlot waits for a place in the fleet semaphore to update sum in,
// and adds its release to h.
func (r *Runner) takeSlot(ctx context.Context, sum string, h *held) (<-chan struct{}, *Outcome) {
	r.setWaiting(true)
	// A host that waits long in line follows the coordinator (its end
	// reaches the host at once) rather than looking for it every few
	// seconds; a host at rest paused that follower. Not at once: a
	// fleet that gets in line at a release would hold one more long
	// poll per host while most wait seconds.
	follow := time.AfterFunc(FollowInLine(), r.rest.wake)
	r.logger.Info("waiting for a fleet slot", "checksum", sum, "concurrency", r.svc.Concurrency)
	lost, err := r.sem.Acquire(ctx)
	follow.Stop()
	r.setWaiting(false)
	if errors.Is(err, lock.ErrMoved) {
		// The rollout moved on while this host waited in line: the next
		// check decides afresh.
		return nil, &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rollout: " + err.Error(), rollout: true,
			Until: r.now().Add(100 * time.Millisecond)}
	}
	if err != nil {
		return nil, &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: fmt.Errorf("take a slot: %w", err)}
	}
	r.setHolding(true)
	r.slotFor = sum
	s := &slot{r: r, lost: lost}
	h.add(func(out Outcome) { s.release(ctx, out) })
	return lost, nil
}

// slotHeld returns, when the fleet's slots can tell, whether the slot
// this pass holds is still this host's now: asked before each step that
// changes what is installed, with the slot's lost channel, which says so
// only once its renewal notices (an agent stopped past its lease and
// resumed would switch first, its slot another host's by then).
func (r *Runner) slotHeld() func() bool {
	if h, ok := r.sem.(interface{ Held() bool }); ok {
		return h.Held
	}
	return nil
}

// release gives the slot back; after a success it first holds it for the
// bake time, so the next host starts only once this one has run a while.
func (s *slot) release(ctx context.Context, out Outcome) {
	r := s.r
	if out.Result == ResultInstalled && r.svc.Hold > 0 {
		r.logger.Info("holding the slot for the bake time", "hold", r.svc.Hold)
		t := time.NewTimer(r.svc.Hold)
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-s.lost:
		}
		t.Stop()
	}
	if err := r.sem.Release(context.WithoutCancel(ctx)); err != nil {
		r.logger.Warn("releasing the slot", "error", err)
	}
	r.setHolding(false)
}

// finish ends every pass of update, every operator's rollback and every
// switch back completed after an interruption, once each: the one place
// the state is saved, then old releases swept, the fleet told (breaker,
// node status, audit log) and the outcome announced.
func (r *Runner) finish(ctx context.Context, st *State, out Outcome) Outcome {
	ctx = context.WithoutCancel(ctx)
	lastError := st.LastError
	st.LastError = ""
	if out.Err != nil {
		st.LastError = out.Err.Error()
	}
	// A check that found nothing to do and no new error leaves the state
	// file alone: no write and no fsync every interval.
	quiet := (out.Result == ResultNoop || out.Result == ResultSkipped || out.Result == ResultDeferred) && st.LastError == lastError
	if !quiet {
		st.LastCheck = r.now().UTC()
		if err := st.Save(r.lay.dir); err != nil {
			r.logger.Error("could not save the state; the next check tries again", "error", err)
			if out.Err == nil {
				out.Result, out.Phase, out.Err = ResultError, PhaseInstall, err
			}
			if r.unsaved != st {
				// The file as it stands: kept unless another writer changes it.
				over, rerr := os.ReadFile(statePath(r.lay.dir))
				if rerr == nil || errors.Is(rerr, fs.ErrNotExist) {
					r.unsaved, r.unsavedOver = st, over
				}
			}
		} else {
			r.unsaved, r.unsavedOver = nil, nil
		}
	}
	switch out.Result {
	case ResultInstalled, ResultRolledBack, ResultReverted:
		r.lay.sweep(st, r.logger)
	case ResultFailed:
		f := st.Failures[out.Checksum]
		attrs := []any{"checksum", out.Checksum, "phase", out.Phase, "error", out.Err}
		if f != nil {
			attrs = append(attrs, "attempts", f.Count, "next_try_in", r.failureBackoff(f.Count))
		}
		r.logger.Error("update failed", attrs...)
		// With a rollout, the failure is reported first and the failed
		// hosts counted after: hosts failing at once each see the others.
		if tripsBreaker(out) && r.decider == nil {
			r.trip(ctx, out)
		}
	}
	switch out.Result {
	case ResultInstalled, ResultFailed, ResultRolledBack, ResultReverted:
		ns := fleet.NodeStatus{Node: r.node, Checksum: st.Checksum, Release: st.Release, Result: string(out.Result),
			Attempt: out.Checksum, Phase: string(out.Phase), Time: r.now().UTC(), Tags: r.tags, Policy: r.policyHash(),
			Watched: out.Watched}
		if out.Err != nil {
			ns.Error = out.Err.Error()
		}
		evs := fleet.OutcomeEvents(ns)
		if out.Result == ResultFailed && tripsBreaker(out) {
			ns.Counted = true
		}
		r.report(ctx, ns, evs)
		if ns.Counted && r.decider != nil && !r.underMaxFailed(ctx, out.Checksum) {
			r.trip(ctx, out)
		}
	}
	if out.Result == ResultDeferred {
		r.reportDeferred(ctx, st, out)
	} else {
		r.deferralEnded(ctx, st, out)
	}
	if out.announce != nil {
		r.announce(ctx, *out.announce)
		out.announce = nil
	}
	if out.Result == ResultInstalled {
		r.logger.Info("installed", "checksum", out.Checksum, "release", out.Release, "duration", out.Duration.Round(time.Millisecond))
	}
	return out
}

// trip marks the checksum of a failed outcome failed for the fleet.
func (r *Runner) trip(ctx context.Context, out Outcome) {
	b := fleet.Breaker{Checksum: out.Checksum, Node: r.node, Phase: string(out.Phase), Error: out.Err.Error(), Time: r.now().UTC()}
	if err := r.fleet.Trip(ctx, r.svc.Name, b); err != nil {
		r.logger.Error("could not mark the checksum failed for the fleet", "error", err)
	}
}

// announce runs the reporting hooks with the outcome of an update. They
// only tell the world: a failure is logged, never fatal.
func (r *Runner) announce(ctx context.Context, ev hooks.Event) {
	ev.Time = r.now()
	for _, a := range r.svc.Report {
		if err := a.Announcer.Announce(ctx, ev); err != nil {
			r.logger.Warn("reporting hook failed", "hook", a.Kind, "result", ev.Result, "error", err)
		}
	}
}

// tripsBreaker says whether a failure is the release's fault, so that
// every host would meet it: hooks, checks, the install, a refused
// archive, a refused signature. A full disk, a network error or a
// timeout is this host's own.
//
// The breaker is keyed by the checksum, so only a checksum this host
// computed over bytes it verified can trip it: bytes that do not match
// what the store claims (a corrupt or short download, or junk uploaded
// with another release's checksum in its metadata) are backed off here
// and reported, never a fleet-wide refusal of the checksum claimed.
func tripsBreaker(o Outcome) bool {
	if errors.Is(o.Err, errUpdateTimeout) || !o.verified || errors.Is(o.Err, artifact.ErrCorrupt) {
		return false
	}
	switch o.Phase {
	case PhaseBefore, PhaseAfter, PhaseCheck, PhaseInstall, PhaseSwitch:
		return true
	case PhaseSignature:
		// Every host would refuse it; but a store that cannot be read
		// is this host's trouble, and a signature for other bytes may
		// be a good release's whose signature is not up yet.
		return errors.Is(o.Err, signature.ErrRefused) && !errors.Is(o.Err, signature.ErrStale)
	case PhaseDownload:
		return errors.Is(o.Err, archive.ErrRefused)
	}
	return false
}

func (r *Runner) crashPoint(p string) {
	if r.crash != nil {
		r.crash(p)
	}
}

// recoverOnce runs recover until it has succeeded once in this process.
func (r *Runner) recoverOnce() error {
	r.recoverMu.Lock()
	defer r.recoverMu.Unlock()
	if r.recovered {
		return nil
	}
	if err := r.recover(); err != nil {
		return fmt.Errorf("recover from an interrupted update: %w", err)
	}
	r.recovered = true
	return nil
}

// recover cleans what a crash left.
func (r *Runner) recover() error {
	if err := os.MkdirAll(r.lay.dir, stateDirMode); err != nil {
		return err
	}
	// Directories and state files made by older versions were
	// world-readable; an idle agent may not rewrite them for a long time.
	if err := os.Chmod(r.lay.dir, stateDirMode); err != nil {
		return err
	}
	if err := os.Chmod(statePath(r.lay.dir), stateFileMode); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := r.lay.recoverDisk(r.logger); err != nil {
		return err
	}
	if err := cleanChunkTemps(filepath.Join(r.lay.dir, "chunks"), r.logger); err != nil {
		return err
	}
	st, err := LoadState(r.lay.dir, r.svc.Name)
	if err != nil {
		return err
	}
	// A switch back to a kept release saved its intent first: open
	// completes it (see resume), whichever process was interrupted.
	if cur := r.lay.current(); cur != "" && cur != st.Release && st.SwitchBack == nil {
		if _, known := st.release(cur); !known {
			// Switched, then interrupted before the state was saved: the
			// release is whole but its after hooks may not have run. It is
			// installed again, hooks and all, by the next check.
			r.logger.Warn("found a release switched by an interrupted update; it will be installed again", "release", cur)
		}
	}
	return nil
}
