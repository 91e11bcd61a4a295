package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/hooks"
)

// reason is why a release becomes current.
type reason string

const (
	reasonInstall  reason = "install"  // a new release, after its before hooks
	reasonRestart  reason = "restart"  // the current release again: an update stopped after its before hooks
	reasonRollback reason = "rollback" // back from a release that failed after its switch
	reasonOperator reason = "operator" // `dropship rollback`
	reasonPin      reason = "pin"      // a fleet pin names a kept release
)

// activation is what activate did.
type activation struct {
	switched bool   // the destination changed
	aside    string // what the destination was before dropship, moved aside
}

// activate is the only way a release becomes current. It points the
// destination at release id (id "" undoes a first install: what was there
// before, moved aside as aside, comes back), runs the after hooks for it
// and, when going back from a release, the rollback chain. Its error is a
// *phaseError: the switch or the hooks.
func (r *Runner) activate(ctx context.Context, id, aside string, ev hooks.Event, why reason) (activation, error) {
	var a activation
	switch {
	case id == "":
		if err := r.lay.unswitch(aside); err != nil {
			return a, &phaseError{PhaseSwitch, fmt.Errorf("switch back: %w", err)}
		}
		a.switched = true
	case r.lay.current() != id:
		moved, err := r.lay.switchTo(id, r.logger)
		a.aside = moved
		if err != nil {
			return a, &phaseError{PhaseSwitch, err}
		}
		a.switched = true
		r.logger.Info("switched", "release", id, "destination", r.svc.Destination, "reason", string(why))
	}
	if why == reasonInstall {
		r.crashPoint("switched")
	} else {
		r.crashPoint("switched:" + string(why))
	}
	// Once the destination points at id, its hooks must run even if the
	// agent is told to stop or the update ran out of time: they start the
	// service. Their own timeouts bound them.
	ctx = context.WithoutCancel(ctx)
	var err error
	if id != "" {
		if err = r.runChain(ctx, r.svc.After, ev); err != nil {
			err = &phaseError{PhaseAfter, err}
		}
	}
	if why == reasonRollback || why == reasonOperator || why == reasonPin {
		r.logger.Warn("rolled back", "release", id, "reason", string(why))
		if rerr := r.runChain(ctx, r.svc.Rollback, ev); rerr != nil && err == nil {
			err = &phaseError{PhaseRollback, rerr}
		}
	}
	return a, err
}

// runChain runs steps in order under their failure policies.
func (r *Runner) runChain(ctx context.Context, steps []hooks.Step, ev hooks.Event) error {
	for i, s := range steps {
		start := r.now()
		var err error
		if s.Once == OnceFleet {
			err = r.runOnce(ctx, s, fmt.Sprintf("%s-%d", ev.Phase, i+1), ev)
		} else {
			err = s.Hook.Run(ctx, ev)
		}
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s hook %d (%s, %s): %w", ev.Phase, i+1, s.Kind, s.Range, err)
		if s.OnFailure == hooks.Continue {
			r.logger.Warn("hook failed; continuing", "phase", ev.Phase, "hook", s.Kind, "error", err,
				"duration", r.now().Sub(start).Round(time.Millisecond))
			continue
		}
		return err
	}
	return nil
}

// Rollback switches the service to release to (an id or a unique prefix
// of one), or to the release installed before the current one, and runs
// the after hooks and the rollback chain for it. The checksum rolled back
// from is not installed again until another one is published.
func (r *Runner) Rollback(ctx context.Context, to string) (Release, error) {
	st, resumed, stop := r.open(ctx)
	if stop != nil {
		return Release{}, stop.Err
	}
	defer r.local.Release(context.WithoutCancel(ctx))
	cur := r.lay.current()
	if resumed != nil && reason(resumed.Reason) == reasonOperator && cur == resumed.Target.ID && to == "" {
		// A rollback killed on its way, run again: the one it started is
		// the one asked for, and it is done now.
		if st.LastError != "" {
			return resumed.Target, fmt.Errorf("rolled back to %s, but: %s", resumed.Target.ID, st.LastError)
		}
		return resumed.Target, nil
	}
	target, err := pickRollback(st, cur, to)
	if err != nil {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, err)
	}
	if resumed != nil && cur == target.ID {
		return target, nil
	}
	out, err := r.switchBack(ctx, st, target, reasonOperator, "")
	if err != nil {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, err)
	}
	out = r.finish(ctx, st, out)
	if out.Phase == PhaseSwitch {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, out.Err)
	}
	if out.Result == ResultError {
		return target, out.Err
	}
	if out.Err != nil {
		return target, fmt.Errorf("rolled back to %s, but a hook failed: %w", target.ID, out.Err)
	}
	return target, nil
}

// switchBack is the one way back to a kept release, for an operator's
// rollback, a pin and a fleet revert. It refuses a release signed by a
// key now revoked (the error, nothing done), warns of one signed before
// the replay mark, saves its intent, then switches, runs the hooks and
// records the switch, and returns the outcome for its caller to finish:
// a crash after the intent is saved is completed at the next start
// (resume), never undone.
func (r *Runner) switchBack(ctx context.Context, st *State, target Release, why reason, words string) (Outcome, error) {
	if err := r.mayRunAgain(target); err != nil {
		return Outcome{}, err
	}
	if n := st.NewestSigned; n != nil && target.Signed != nil && target.Signed.Time.Before(n.Time) {
		r.logger.Warn("switching back to a release signed before the newest one installed here: an operator's rollback, a pin or a revert may, an update never would (it is refused as a replay)",
			"release", target.ID, "signed", target.Signed.Time, "newest_signed", n.Time, "reason", string(why))
	}
	cur := r.lay.current()
	sb := SwitchBack{Target: target, From: cur, FromChecksum: st.Checksum, Reason: string(why), Why: words, Time: r.now().UTC()}
	if from, ok := st.release(cur); ok && from.Checksum != "" {
		sb.FromChecksum = from.Checksum
	}
	st.SwitchBack = &sb
	if err := st.Save(r.lay.dir); err != nil {
		st.SwitchBack = nil
		return Outcome{}, fmt.Errorf("save the intent to switch back to %s, before switching: %w", target.ID, err)
	}
	// The file holds all of st now, including what an earlier check
	// could not save.
	r.unsaved, r.unsavedOver = nil, nil
	r.crashPoint("intent:" + string(why))
	return r.carryOut(ctx, st, sb), nil
}

// carryOut does a switch back whose intent is saved: the switch (none
// when the destination is there already, as after a crash), the after
// hooks and the rollback chain, for a revert the checks; then the state
// records it, the intent cleared; its caller finishes the outcome, which
// saves and reports it.
func (r *Runner) carryOut(ctx context.Context, st *State, sb SwitchBack) Outcome {
	why, target := reason(sb.Reason), sb.Target
	start := r.now()
	ev := hooks.Event{Name: r.svc.Name, Hostname: r.node, Hash: target.Checksum, PreviousHash: sb.FromChecksum,
		Release: target.ID, ReleaseDir: r.lay.releaseDir(target.ID), Phase: hooks.PhaseRollback,
		Result: "rollback", Time: start}
	if sb.From != "" {
		ev.PreviousDir = r.lay.releaseDir(sb.From)
	}
	if why == reasonRevert {
		ev.Phase, ev.Result = hooks.PhaseAfter, "revert"
	}
	ctx = context.WithoutCancel(ctx)
	_, err := r.activate(ctx, target.ID, "", ev, why)
	phase := PhaseRollback
	if pe, ok := err.(*phaseError); ok {
		if pe.phase == PhaseSwitch {
			st.SwitchBack = nil
			return Outcome{Result: ResultError, Checksum: st.Checksum, Phase: PhaseSwitch,
				Err: fmt.Errorf("switch back to %s (%s): %w", target.ID, why, err)}
		}
		phase = pe.phase
	}
	ev.Duration = r.now().Sub(start)
	a := Attempt{Time: start.UTC(), Checksum: target.Checksum, Release: target.ID, Result: "rollback"}
	out := Outcome{Result: ResultRolledBack, Checksum: target.Checksum, Release: target.ID,
		Phase: PhaseRollback, Err: err, Reason: sb.Why, announce: &ev}
	if why == reasonRevert {
		if err == nil {
			cev := ev
			cev.Phase = hooks.PhaseCheck
			if err = r.runChain(ctx, r.svc.Checks, cev); err != nil {
				phase = PhaseCheck
			}
			ev.Duration = r.now().Sub(start)
		}
		a.Result = "revert"
		out = Outcome{Result: ResultReverted, Checksum: target.Checksum, Release: target.ID, announce: &ev}
		if err != nil {
			out.Phase, out.Err = phase, fmt.Errorf("reverted to %s, but: %w", target.ID, err)
			r.logger.Error("fleet revert: a hook failed after switching back", "release", target.ID, "error", err)
		}
	}
	a.Duration = ev.Duration
	if err != nil {
		a.Error = err.Error()
	}
	if why == reasonRevert {
		st.reverted(target, a)
	} else {
		st.rolledBack(target, sb.FromChecksum, a)
	}
	if why == reasonOperator {
		r.logger.Warn("rolled back by operator", "release", target.ID, "from_checksum", sb.FromChecksum)
	}
	st.SwitchBack = nil
	return out
}

// resume completes a switch back a crash interrupted (the agent's, or a
// killed `dropship rollback`, which is another process than the agent:
// so it is looked for each time the state is read, not once per
// process). Destination on the target: the switch is recorded and the
// after hooks and the rollback chain run again, since the crash may have
// come before or during them and the service must run the release it is
// on. An operator's rollback not switched yet is carried out; a pin or a
// revert not switched yet is dropped, left to the check that follows: it
// reads the fleet again, which may have lifted the pin or cleared the
// breaker meanwhile, and switches in a fleet slot. A target whose key was
// revoked since is dropped too, the destination put back on the release
// left if it was switched (putBack). It returns the switch back completed.
func (r *Runner) resume(ctx context.Context, st *State) *SwitchBack {
	sb := *st.SwitchBack
	why, switched := reason(sb.Reason), r.lay.current() == sb.Target.ID
	drop := func(msg string, args ...any) *SwitchBack {
		r.logger.Warn(msg, append([]any{"release", sb.Target.ID, "reason", sb.Reason}, args...)...)
		st.SwitchBack = nil
		if err := st.Save(r.lay.dir); err != nil {
			r.logger.Error("could not save the state", "error", err)
		}
		return nil
	}
	if err := r.mayRunAgain(sb.Target); err != nil {
		if switched {
			r.putBack(ctx, sb)
		}
		return drop("an interrupted switch back is dropped", "error", err)
	}
	if !switched && why != reasonOperator {
		return drop("an interrupted switch back had not switched yet; the next check decides afresh")
	}
	r.logger.Warn("completing a switch back an interruption left unfinished", "release", sb.Target.ID,
		"reason", sb.Reason, "switched", switched, "from", sb.From)
	r.finish(ctx, st, r.carryOut(ctx, st, sb))
	return &sb
}

// putBack points the destination back at the release an interrupted
// switch back left, when the release it switched to may not run again
// (its key was revoked since): the state still names the release left,
// and the service runs it again, its after hooks and the rollback chain
// run as after a failed update. A release left that is gone is logged:
// nothing else can be put back.
func (r *Runner) putBack(ctx context.Context, sb SwitchBack) {
	if !r.lay.present(sb.From) {
		r.logger.Error("an interrupted switch back went to a release that may not run again, and the release it left is not there to go back to",
			"release", sb.Target.ID, "from", sb.From)
		return
	}
	ev := hooks.Event{Name: r.svc.Name, Hostname: r.node, Hash: sb.FromChecksum, PreviousHash: sb.Target.Checksum,
		Release: sb.From, ReleaseDir: r.lay.releaseDir(sb.From), PreviousDir: r.lay.releaseDir(sb.Target.ID),
		Phase: hooks.PhaseRollback, Result: "rollback", Time: r.now()}
	r.logger.Warn("an interrupted switch back went to a release that may not run again; putting back the release it left",
		"release", sb.Target.ID, "from", sb.From)
	if _, err := r.activate(ctx, sb.From, "", ev, reasonRollback); err != nil {
		r.logger.Error("putting back the release an interrupted switch back left", "release", sb.From, "error", err)
	}
}

// mayRunAgain refuses to make a kept release current again when the key
// that signed it is now in revoked_keys: checked on every switch back
// (an operator's rollback, a pin, a fleet revert), as for an update.
func (r *Runner) mayRunAgain(rel Release) error {
	if rel.Signed != nil && r.svc.Keys.RevokedID(rel.Signed.KeyID) {
		return fmt.Errorf("release %s: %w (key id %s is in revoked_keys)", rel.ID, signature.ErrRevokedKey, rel.Signed.KeyID)
	}
	return nil
}

func pickRollback(st *State, cur, to string) (Release, error) {
	if len(st.Releases) == 0 {
		return Release{}, fmt.Errorf("no releases are kept")
	}
	if to != "" {
		var found []Release
		for _, r := range st.Releases {
			if r.ID == to {
				return r, nil
			}
			if strings.HasPrefix(r.ID, to) {
				found = append(found, r)
			}
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
			return Release{}, fmt.Errorf("no kept release %q (see `dropship history`)", to)
		}
		return Release{}, fmt.Errorf("%q matches %d releases; give more of the id", to, len(found))
	}
	idx := -1
	for i, r := range st.Releases {
		if r.ID == cur {
			idx = i
		}
	}
	if idx <= 0 {
		if idx == -1 && cur == "" {
			return Release{}, fmt.Errorf("nothing is installed")
		}
		return Release{}, fmt.Errorf("no release older than the current one %q is kept", cur)
	}
	// The newest older release of another checksum: one of the same
	// checksum (the current release installed again) is no way back.
	for i := idx - 1; i >= 0; i-- {
		if st.Releases[i].Checksum != st.Releases[idx].Checksum {
			return st.Releases[i], nil
		}
	}
	return Release{}, fmt.Errorf("no release older than the current one %q with another checksum is kept", cur)
}

// HistoryEntry is one kept release as `dropship history` shows it.
type HistoryEntry struct {
	Release
	Current bool `json:"current"`
	// Unrecorded marks the release destination points at when the state
	// file does not name it: an agent switched to it and could not save
	// its state yet (a full disk), or was stopped before it could.
	Unrecorded bool `json:"unrecorded,omitempty"`
}

// History returns the kept releases, oldest first, and recent attempts.
func (r *Runner) History() ([]HistoryEntry, []Attempt, error) {
	st, err := LoadState(r.lay.dir, r.svc.Name)
	if err != nil {
		return nil, nil, err
	}
	cur := r.lay.current()
	out := make([]HistoryEntry, 0, len(st.Releases))
	found := false
	for _, rel := range st.Releases {
		out = append(out, HistoryEntry{Release: rel, Current: rel.ID == cur})
		found = found || rel.ID == cur
	}
	// A release directory that is gone (removed by hand) is not one an
	// agent switched to: destination dangles, and nothing is listed.
	if !found && r.lay.present(cur) {
		out = append(out, HistoryEntry{Release: Release{ID: cur}, Current: true, Unrecorded: true})
	}
	return out, st.History, nil
}
