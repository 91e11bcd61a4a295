package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/hooks"
)

// watcher is a health check that goes on after the switch (watch = "…"):
// for its window, a failure rolls the release back like a failure at the
// switch.
type watcher interface {
	WatchWindow() time.Duration
	Watch(ctx context.Context, ev hooks.Event, failed func(n int, err error)) error
}

// bakeWatcher is a check with watch = "bake": its window is the
// rollout's bake.
type bakeWatcher interface {
	WatchesBake() bool
	SetWatchWindow(time.Duration)
}

// watch runs the watched checks of the new release, all at once, until
// their windows close, with the fleet slot held: the next host (and the
// next wave, which counts this one only once it reports) starts only
// after. The first that fails fails the update, which the undo stack
// rolls back. A shutdown, or update_timeout, ends the watch early and
// the release stays: it passed its checks at the switch.
func (t *txn) watch(outer context.Context) error {
	type watched struct {
		step hooks.Step
		w    watcher
	}
	var ws []watched
	var window time.Duration
	for _, s := range t.r.svc.Checks {
		if w, ok := s.Hook.(watcher); ok && w.WatchWindow() > 0 {
			ws = append(ws, watched{s, w})
			window = max(window, w.WatchWindow())
		}
	}
	if len(ws) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(outer)
	defer cancel()
	until := t.r.now().Add(window)
	t.r.setWatching(until)
	defer t.r.setWatching(time.Time{})
	t.logger.Info("watching the release's health", "release", t.id, "window", window, "until", until.Format(time.RFC3339))
	ev := t.ev
	ev.Phase = hooks.PhaseCheck
	type failure struct {
		kind string
		err  error
	}
	errs := make(chan failure, len(ws))
	var continued atomic.Bool // a check failed, on_failure = "continue"
	for _, w := range ws {
		go func() {
			err := w.w.Watch(ctx, ev, func(n int, err error) {
				t.logger.Warn("watch: probe failed", "release", t.id, "check", w.step.Kind, "failed_probes", n, "error", err)
			})
			if err != nil && w.step.OnFailure == hooks.Continue {
				t.logger.Warn("watch: check failed; on_failure = continue", "release", t.id, "check", w.step.Kind, "error", err)
				continued.Store(true)
				err = nil
			}
			errs <- failure{w.step.Kind, err}
		}()
	}
	for range ws {
		if f := <-errs; f.err != nil {
			return fmt.Errorf("%s check: %w", f.kind, f.err)
		}
	}
	if outer.Err() != nil {
		t.logger.Warn("watch cut short; the release stays (it passed its checks at the switch)", "release", t.id,
			"cause", context.Cause(outer))
		return nil
	}
	if continued.Load() {
		// The release stays, but was not seen healthy for the window (its
		// check stopped at the failure): no watch served.
		t.logger.Info("watch window closed after a check failed (on_failure = continue); the release stays", "release", t.id, "window", window)
		return nil
	}
	t.logger.Info("watch window closed; the release stays", "release", t.id, "window", window)
	t.watched = window
	return nil
}

// watchDiags sets the window of watch = "bake" checks to the rollout's
// bake (an error without one), and says when a check's watch window is
// longer than update_timeout, which ends it early.
func watchDiags(s *Service) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, c := range s.Checks {
		b, ok := c.Hook.(bakeWatcher)
		if !ok || !b.WatchesBake() {
			continue
		}
		if s.Rollout == nil || s.Rollout.Bake <= 0 {
			rng := c.Range
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "watch = \"bake\" without a bake",
				Detail:  "watch = \"bake\" watches the release's health for the bake of its rollout wave, and this service has no rollout block with a bake. Add one (rollout { bake = \"10m\" … }), or give the window itself: watch = \"10m\".",
				Subject: &rng})
			continue
		}
		b.SetWatchWindow(s.Rollout.Bake)
	}
	for _, c := range s.Checks {
		w, ok := c.Hook.(watcher)
		if !ok || w.WatchWindow() < s.UpdateTimeout {
			continue
		}
		rng := c.Range
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "watch longer than update_timeout",
			Detail: fmt.Sprintf("watch = %s, but update_timeout is %s: the watch is part of the update (the host holds its fleet slot until the window closes), and update_timeout would end it early. Raise update_timeout above the window, or shorten watch.",
				w.WatchWindow(), s.UpdateTimeout),
			Subject: &rng})
	}
	return diags
}
