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
	if why == reasonRollback || why == reasonOperator {
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
	st, stop := r.open(ctx)
	if stop != nil {
		return Release{}, stop.Err
	}
	defer r.local.Release(context.WithoutCancel(ctx))
	cur := r.lay.current()
	target, err := pickRollback(st, cur, to)
	if err == nil {
		err = r.mayRunAgain(target)
	}
	if err != nil {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, err)
	}
	if n := st.NewestSigned; n != nil && target.Signed != nil && target.Signed.Time.Before(n.Time) {
		r.logger.Warn("rolling back to a release signed before the newest one installed here: an operator may, an update never would (it is refused as a replay)",
			"release", target.ID, "signed", target.Signed.Time, "newest_signed", n.Time)
	}
	from, _ := st.release(cur)
	if from.Checksum == "" {
		from.Checksum = st.Checksum
	}
	start := r.now()
	ev := hooks.Event{Name: r.svc.Name, Hostname: r.node, Hash: target.Checksum, PreviousHash: from.Checksum,
		Release: target.ID, ReleaseDir: r.lay.releaseDir(target.ID), Phase: hooks.PhaseRollback,
		Result: "rollback", Time: start}
	if cur != "" {
		ev.PreviousDir = r.lay.releaseDir(cur)
	}
	_, hookErr := r.activate(context.WithoutCancel(ctx), target.ID, "", ev, reasonOperator)
	if pe, ok := hookErr.(*phaseError); ok && pe.phase == PhaseSwitch {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, hookErr)
	}
	ev.Duration = r.now().Sub(start)
	a := Attempt{Time: start.UTC(), Checksum: target.Checksum, Release: target.ID, Result: "rollback", Duration: ev.Duration}
	if hookErr != nil {
		a.Error = hookErr.Error()
	}
	st.rolledBack(target, from.Checksum, a)
	r.logger.Warn("rolled back by operator", "release", target.ID, "from_checksum", from.Checksum)
	out := r.finish(ctx, st, Outcome{Result: ResultRolledBack, Checksum: target.Checksum, Release: target.ID,
		Phase: PhaseRollback, Err: hookErr, announce: &ev})
	if out.Result == ResultError {
		return target, out.Err
	}
	if hookErr != nil {
		return target, fmt.Errorf("rolled back to %s, but a hook failed: %w", target.ID, hookErr)
	}
	return target, nil
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
