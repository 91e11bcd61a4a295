package agent

import (
	"context"
	"fmt"
	"strings"

	"github.com/dropshipd/dropship/hooks"
)

// Rollback switches the service to release to (an id or a unique prefix
// of one), or to the release installed before the current one, and runs
// the after hooks for it. The checksum rolled back from is not installed
// again until another one is published.
func (r *Runner) Rollback(ctx context.Context, to string) (Release, error) {
	if _, err := r.local.Acquire(ctx); err != nil {
		return Release{}, err
	}
	defer r.local.Release(context.WithoutCancel(ctx))
	st, err := LoadState(r.lay.dir, r.svc.Name)
	if err != nil {
		return Release{}, err
	}
	cur := r.lay.current()
	target, err := pickRollback(st, cur, to)
	if err != nil {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, err)
	}
	from, _ := st.release(cur)
	if from.Checksum == "" {
		from.Checksum = st.Checksum
	}
	if _, err := r.lay.switchTo(target.ID, r.logger); err != nil {
		return Release{}, fmt.Errorf("rollback %s: %w", r.svc.Name, err)
	}
	start := r.now()
	ev := hooks.Event{Name: r.svc.Name, Hostname: r.node, Hash: target.Checksum, PreviousHash: from.Checksum,
		Release: target.ID, ReleaseDir: r.lay.releaseDir(target.ID), Phase: hooks.PhaseRollback,
		Result: "rollback", Time: start}
	if cur != "" {
		ev.PreviousDir = r.lay.releaseDir(cur)
	}
	hookErr := r.runChain(context.WithoutCancel(ctx), r.svc.After, ev, r.logger)
	if err := r.runChain(context.WithoutCancel(ctx), r.svc.Rollback, ev, r.logger); hookErr == nil {
		hookErr = err
	}
	ev.Duration = r.now().Sub(start)
	r.announce(context.WithoutCancel(ctx), ev, r.logger)
	if from.Checksum != target.Checksum {
		st.RolledBackFrom = from.Checksum
	}
	st.Checksum, st.SHA256, st.VersionID, st.Release = target.Checksum, target.SHA256, target.VersionID, target.ID
	a := Attempt{Time: start.UTC(), Checksum: target.Checksum, Release: target.ID, Result: "rollback",
		Duration: r.now().Sub(start)}
	if hookErr != nil {
		a.Error = hookErr.Error()
	}
	st.record(a)
	if err := st.Save(r.lay.dir); err != nil {
		return target, err
	}
	r.logger.Warn("rolled back by operator", "release", target.ID, "from_checksum", from.Checksum)
	r.report(ctx, st, Outcome{Result: ResultRolledBack, Checksum: target.Checksum, Release: target.ID, Err: hookErr})
	if hookErr != nil {
		return target, fmt.Errorf("rolled back to %s, but a hook failed: %w", target.ID, hookErr)
	}
	return target, nil
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
	return st.Releases[idx-1], nil
}

// HistoryEntry is one kept release as `dropship history` shows it.
type HistoryEntry struct {
	Release
	Current bool `json:"current"`
}

// History returns the kept releases, oldest first, and recent attempts.
func (r *Runner) History() ([]HistoryEntry, []Attempt, error) {
	st, err := LoadState(r.lay.dir, r.svc.Name)
	if err != nil {
		return nil, nil, err
	}
	cur := r.lay.current()
	out := make([]HistoryEntry, 0, len(st.Releases))
	for _, rel := range st.Releases {
		out = append(out, HistoryEntry{Release: rel, Current: rel.ID == cur})
	}
	return out, st.History, nil
}
