package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/internal/hclx"
)

// OnceFleet: `once = "fleet"`, a hook one host runs per release.
const OnceFleet = "fleet"

// onceFleet is the fleet's part in run-once hooks (lock "consul"): the
// lock, and the record the other hosts wait for.
type onceFleet interface {
	RunOnce(ctx context.Context, service, checksum, hook string, run func(ctx context.Context, runID string) error) (fleet.Once, bool, error)
}

// errOnceWait: the hosts waiting for a run-once hook gave up.
var errOnceWait = errors.New("waited too long for the run-once hook")

// runOnce runs a once = "fleet" hook of an install: on one host of the
// fleet, the others waiting for its success. A rollback, a revert or a
// restart of the current release never runs it. On a single host it
// simply runs.
func (r *Runner) runOnce(ctx context.Context, s hooks.Step, hook string, ev hooks.Event) error {
	if ev.Result != "" {
		r.logger.Info("run-once hook not run: it runs for installs only", "phase", ev.Phase, "hook", hook, "result", ev.Result)
		return nil
	}
	of, ok := r.fleet.(onceFleet)
	if !ok {
		ev.RunID = newRunID()
		return s.Hook.Run(ctx, ev)
	}
	wait := onceWaitFor(s.Hook)
	wctx, cancel := context.WithTimeoutCause(ctx, wait, fmt.Errorf("%w (%s)", errOnceWait, wait))
	defer cancel()
	start := r.now()
	rec, ran, err := of.RunOnce(wctx, r.svc.Name, ev.Hash, hook, func(ctx context.Context, runID string) error {
		ev.RunID = runID
		r.logger.Info("running the run-once hook for the fleet", "phase", ev.Phase, "hook", hook, "run_id", runID)
		return s.Hook.Run(ctx, ev)
	})
	if ran {
		detail := fmt.Sprintf("%s hook ran on this host, run %s (run %d): %s", hook, rec.RunID, rec.Runs, rec.Result)
		if err != nil {
			detail += ": " + err.Error()
		}
		if rerr := r.fleet.Record(context.WithoutCancel(ctx), r.svc.Name, fleet.Event{Time: r.now().UTC(), Kind: fleet.EventOnce,
			Who: r.node, Via: "agent", Node: r.node, Checksum: ev.Hash, Phase: ev.Phase, Detail: fleet.Clip(detail)}); rerr != nil {
			r.logger.Warn("could not record the event in the audit log", "kind", fleet.EventOnce, "error", rerr)
		}
	} else if err == nil {
		r.logger.Info("run-once hook ran on another host", "phase", ev.Phase, "hook", hook, "ran_on", rec.Node,
			"run_id", rec.RunID, "waited", r.now().Sub(start).Round(time.Millisecond))
	}
	return err
}

// onceWaitFor bounds the wait of the hosts that do not run a run-once
// hook: its timeout twice (its host may die and another run it again),
// and the time for a dead host's session to expire.
func onceWaitFor(h hooks.Hook) time.Duration {
	timeout := script.DefaultTimeout
	if sh, ok := h.(*script.Hook); ok && sh.Timeout > 0 {
		timeout = sh.Timeout
	}
	return 2*timeout + time.Minute
}

func newRunID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// decodeOnce reads the once attribute of a hook block of chain what.
func decodeOnce(what string, b hookBlock, fleetKind string) (string, hcl.Diagnostics) {
	if b.Once == nil {
		return "", nil
	}
	switch {
	case *b.Once != OnceFleet:
		return "", hcl.Diagnostics{hclx.Errorf(b.Full, "once", "Invalid once",
			"once = %q: the only value is %q (one host of the fleet runs the hook per release, the others wait for it).", *b.Once, OnceFleet)}
	case what != "before" && what != "after":
		return "", hcl.Diagnostics{hclx.Errorf(b.Full, "once", "Invalid once",
			"once = %q has no meaning in %s block: only before and after hooks run once for the fleet.", *b.Once, article(what))}
	case fleetKind == "local":
		return OnceFleet, hcl.Diagnostics{{Severity: hcl.DiagWarning, Summary: "once = \"fleet\" without a fleet",
			Detail:  "There is no lock \"consul\" block, so no fleet to share the run with: this host runs the hook itself at each install (never on a rollback or a revert), as if once were not set.",
			Subject: hclx.AttrRange(b.Full, "once")}}
	}
	return OnceFleet, nil
}
