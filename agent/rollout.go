package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/blocking"
)

// reasonRevert: the fleet's breaker tripped on the checksum installed
// here, and the rollout says to go back.
const reasonRevert reason = "revert"

// ResultReverted: the host went back to its previous release because the
// fleet refused the one it ran (rollout on_failure = "revert").
const ResultReverted Result = "reverted"

// policyHash is what this host records of its rollout policy.
func (r *Runner) policyHash() string {
	if r.svc.Rollout == nil {
		return ""
	}
	return r.svc.Rollout.Hash()
}

// register writes this host's node record with its tags and policy when
// the fleet lacks it or it differs (a new host, new tags, a Consul that
// lost its data), keeping what it said before: the waves are planned from
// the registered hosts, including those that have installed nothing yet.
func (r *Runner) register(ctx context.Context, st *State, view fleet.Status) {
	var own *fleet.NodeStatus
	for i := range view.Nodes {
		if view.Nodes[i].Node == r.node {
			own = &view.Nodes[i]
		}
	}
	ns := fleet.NodeStatus{Node: r.node, Checksum: st.Checksum, Release: st.Release, Result: "registered", Time: r.now().UTC()}
	if own != nil {
		if own.Policy == r.policyHash() && equalTags(own.Tags, r.tags) && own.Checksum == st.Checksum {
			if r.registeredAt.IsZero() {
				// Registered by an earlier run (`agent --once` from cron,
				// a restart): the fleet knew this host already, so there
				// is nothing to let settle.
				r.registeredAt = r.now().Add(-registerSettle)
			}
			return
		}
		ns = *own
		if own.Checksum != st.Checksum {
			// What the record said is stale (a report that was lost):
			// the install is as of now, and a bake counts from here; the
			// old record's watch was of another release.
			ns.Result, ns.Time, ns.Watched = "registered", r.now().UTC(), 0
		}
		ns.Checksum, ns.Release = st.Checksum, st.Release
	}
	ns.Tags, ns.Policy = r.tags, r.policyHash()
	switch {
	case r.registeredAt.IsZero():
		r.registeredAt = r.now()
	case own == nil:
		// The fleet lost its records (a Consul that restarted empty):
		// the others register again as their followers come back, up to
		// followBackoffCap apart: wait that long before planning.
		r.registeredAt = r.now().Add(reregisterSettle - registerSettle)
	}
	if err := r.fleet.Report(ctx, r.svc.Name, ns); err != nil {
		r.logger.Warn("could not register in the fleet", "error", err)
		r.rest.mark() // the next check reads the records again, and registers
		return
	}
	r.logger.Info("registered in the fleet", "tags", r.tags, "policy", ns.Policy)
}

// samePolicy says whether every registered host has this host's rollout
// policy: only then is a plan it makes the fleet's.
func (r *Runner) samePolicy(view fleet.Status) bool {
	for _, n := range view.Nodes {
		if n.Policy != r.policyHash() {
			return false
		}
	}
	return true
}

func equalTags(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// decision is what the rollout decides a check does before the store is
// looked at; act carries it out.
type decision struct {
	do   reason       // reasonInstall, reasonPin or reasonRevert
	stop *Outcome     // the check ends here: it waits, skips, or cannot read the fleet
	view fleet.Status // an install's: the fleet as read, for rolloutGate
	// A pin's or a revert's: the kept release to switch to, the pin's
	// words, and what switchStill looks for again once the slot is held.
	target  Release
	words   string
	pin     *fleet.Pin
	breaker *fleet.Breaker
}

func stopHere(out Outcome) decision { return decision{stop: &out} }

// rolloutFirst runs before the store is looked at, for a service with a
// rollout: it registers the host and decides whether the check installs
// (then rolloutGate decides on the wave), switches to a pin's release,
// reverts a release the fleet refused, or stops here.
func (r *Runner) rolloutFirst(ctx context.Context, st *State) decision {
	mark := r.rest.begin(r.now())
	view, err := r.ownRecords(ctx)
	if err != nil {
		return stopHere(Outcome{Result: ResultError, Phase: PhaseLock, Err: fmt.Errorf("read the rollout: %w", err)})
	}
	r.rest.read(mark)
	r.register(ctx, st, view)
	d := decision{do: reasonInstall, view: view}
	if pin := rollout.Pinned(view.Pins, r.node); pin != nil {
		d = r.pinned(st, view, pin)
	} else if r.svc.Rollout.OnFailure == rollout.OnFailureRevert && st.Checksum != "" {
		if b := view.Breaker(st.Checksum); b != nil {
			d = r.revert(st, view, b)
		}
	}
	if d.stop == nil && d.do != reasonInstall && r.coord != nil {
		r.coord.Want("") // a pin or a revert waits for no wave
	}
	if d.stop == nil && d.do == reasonInstall && r.coord != nil {
		// The look that follows takes the hold and the breaker from
		// these records rather than reading them again.
		fresh := view
		r.fresh = &fresh
	}
	return d
}

// rolloutGate decides whether this host's wave may take info now. A
// waiting host looks again when the decision says, or when the fleet
// changes (see Agent.follow).
func (r *Runner) rolloutGate(ctx context.Context, view fleet.Status, info artifact.Info) *Outcome {
	sum := info.Checksum()
	// Waves are planned from the registered hosts: a host that has just
	// started gives the others started with it time to register, or it
	// could see a fleet of one and take itself for the canary.
	if settled := r.registeredAt.Add(registerSettle); r.registeredAt.IsZero() || r.now().Before(settled) {
		return &Outcome{Result: ResultSkipped, Checksum: sum, Until: settled, rollout: true, Reason: reasonSettle}
	}
	if r.coord != nil {
		// The coordinator's document is written with an agent's token:
		// the freeze, an operator's record read here as the hold and
		// the breakers are, stops this host whatever the document says.
		if f := view.Freeze; f != nil && (f.Until.IsZero() || r.now().Before(f.Until)) {
			// Still asked for, so a coordinator is elected and its
			// document, which this host follows, says when the freeze
			// is lifted.
			if _, _, err := r.coord.Rollout(ctx, sum); err != nil {
				return &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: fmt.Errorf("read the rollout: %w", err)}
			}
			why := "rollout: frozen by " + f.Who + ": " + f.Reason
			if !f.Until.IsZero() {
				why += " (until " + f.Until.Format(time.RFC3339) + ")"
			}
			return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: why, Until: f.Until, rollout: true}
		}
		return r.coordGate(ctx, sum, !r.granted)
	}
	if _, fixed := view.Plans[sum]; !fixed && r.samePolicy(view) {
		// The first host to decide on this release fixes its plan: a
		// host that registers later goes into the last wave, and no host
		// moves into an earlier or an approved wave.
		steps := r.svc.Rollout.Plan(sum, rollout.Members(view, r.node))
		if _, err := r.records.FixPlan(ctx, r.svc.Name, sum, rollout.Waves(steps)); err != nil {
			return &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: fmt.Errorf("fix the rollout's plan: %w", err)}
		}
		var err error
		if view, err = r.records.Status(ctx, r.svc.Name); err != nil {
			return &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: fmt.Errorf("read the rollout: %w", err)}
		}
	}
	dec, stop := r.decide(ctx, view, sum, r.node)
	if stop != nil {
		return stop
	}
	if dec.Go {
		if dec.Wave != "" {
			r.logger.Info("rollout: this host's wave may start", "checksum", sum, "wave", dec.Wave)
		}
		return nil
	}
	return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rollout wave " + dec.Wave + ": " + dec.Reason,
		Until: dec.Until, rollout: true}
}

// decide applies the rollout to host me of view: the decision, or the
// outcome that ends the check when the rollout must stop (the breaker is
// tripped here, and a failed gate recorded).
func (r *Runner) decide(ctx context.Context, view fleet.Status, sum, me string) (rollout.Decision, *Outcome) {
	dec := r.decider.Decide(ctx, me, rollout.View{Service: r.svc.Name, Checksum: sum, Status: view, Now: r.now()})
	if dec.Trip == "" {
		return dec, nil
	}
	r.logger.Error("rollout stopped", "checksum", sum, "wave", dec.Wave, "reason", dec.Trip)
	b := fleet.Breaker{Checksum: sum, Node: r.node, Phase: dec.TripPhase, Error: dec.Trip, Time: r.now().UTC()}
	if err := r.fleet.Trip(ctx, r.svc.Name, b); err != nil {
		return dec, &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: fmt.Errorf("trip the breaker: %w", err)}
	}
	if dec.TripPhase == rollout.PhaseGate { // the failures that reach max_failed are in the log already
		r.record(ctx, fleet.Event{Kind: fleet.EventGate, Who: r.node, Via: "agent", Node: r.node,
			Checksum: sum, Detail: fleet.Clip(dec.Trip)})
	}
	return dec, &Outcome{Result: ResultSkipped, Checksum: sum, Reason: dec.Trip, rollout: true}
}

// rolloutAgain decides again once the slot is held: a freeze, a pin or a
// breaker may have come while this host waited for it. (A pin or a revert
// is left to the next check, which takes the slot for it.)
func (r *Runner) rolloutAgain(ctx context.Context, info artifact.Info) *Outcome {
	view, err := r.ownRecords(ctx)
	if err != nil {
		return &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: info.Checksum(), Err: fmt.Errorf("read the rollout: %w", err)}
	}
	if pin := rollout.Pinned(view.Pins, r.node); pin != nil {
		return &Outcome{Result: ResultSkipped, Checksum: info.Checksum(), Reason: "pinned to " + pin.Target + " by " + pin.Who}
	}
	r.granted = true // the wave must be open now, not only in line
	defer func() { r.granted, r.slotFor = false, "" }()
	return r.rolloutGate(ctx, view, info)
}

// switchStill decides again on a pin or a revert once the slot is held,
// the fleet read afresh: a pin lifted or changed, a hold set, the breaker
// lifted, or the revert's target refused too while the host waited for
// its slot stop the switch; the next check decides afresh.
func (r *Runner) switchStill(ctx context.Context, st *State, d decision) *Outcome {
	view, err := r.ownRecords(ctx) // a coordinated host reads its own share, not every host's
	if err != nil {
		return &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: st.Checksum, Err: fmt.Errorf("read the rollout: %w", err)}
	}
	skip := func(why string) *Outcome { return &Outcome{Result: ResultSkipped, Checksum: st.Checksum, Reason: why} }
	if d.do == reasonPin {
		if p := rollout.Pinned(view.Pins, r.node); p == nil || p.Target != d.pin.Target || view.Hold != nil {
			return skip("the pin or a hold changed while this host waited for a slot")
		}
		return nil
	}
	switch {
	case view.Hold != nil:
		return skip(revertHeld(view.Hold))
	case view.Breaker(d.breaker.Checksum) == nil:
		return skip("no revert: the breaker of " + d.breaker.Checksum + " was lifted")
	case rollout.Pinned(view.Pins, r.node) != nil:
		return skip("no revert: this host was pinned meanwhile")
	case view.Breaker(d.target.Checksum) != nil:
		// Refused too while the host waited: the next check goes
		// further back, past it, or says it cannot.
		return skip("no revert to " + d.target.ID + ": the fleet refused its checksum " + d.target.Checksum + " meanwhile")
	}
	return nil
}

// revert decides to switch this host back from a checksum the fleet's
// breaker refused: concurrency at a time, without waves or windows; the
// switch back then runs the after hooks and the checks.
func (r *Runner) revert(st *State, view fleet.Status, b *fleet.Breaker) decision {
	if view.Hold != nil {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum, Reason: revertHeld(view.Hold)})
	}
	cur := r.lay.current()
	target, err := pickRollback(st, cur, "")
	// Further back past the same bytes kept twice, past any release the
	// fleet refused too, past one signed by a key since revoked, and past
	// one whose directory was removed by hand (no switch could reach it).
	for err == nil && (target.Checksum == b.Checksum || view.Breaker(target.Checksum) != nil || r.mayRunAgain(target) != nil ||
		!r.lay.present(target.ID)) {
		target, err = pickRollback(st, target.ID, "")
	}
	if err != nil {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum,
			Reason: fmt.Sprintf("the fleet reverts %s (failed on %s in %s), but this host cannot: %v", b.Checksum, b.Node, b.Phase, err)})
	}
	return decision{do: reasonRevert, target: target, breaker: b}
}

func revertHeld(h *fleet.Hold) string { return "revert waits: on hold by " + h.Who + ": " + h.Reason }

// pinned keeps a pinned host on its pin's release: it decides a switch to
// it if a kept release matches, never an update while the pin stands.
func (r *Runner) pinned(st *State, view fleet.Status, pin *fleet.Pin) decision {
	why := fmt.Sprintf("pinned to %s by %s (hosts %s)", pin.Target, pin.Who, pin.Nodes)
	matches := func(rel Release) bool {
		return rel.Checksum == pin.Target || (len(pin.Target) >= 6 && strings.HasPrefix(rel.ID, pin.Target)) || rel.ID == pin.Target
	}
	cur := r.lay.current()
	if rel, ok := st.release(cur); ok && matches(rel) {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum, Release: cur, Reason: why})
	}
	// The newest kept release that matches and is there: one whose
	// directory was removed by hand is no way back.
	var target, gone *Release
	for i := len(st.Releases) - 1; i >= 0; i-- {
		if matches(st.Releases[i]) {
			if r.lay.present(st.Releases[i].ID) {
				target = &st.Releases[i]
				break
			}
			if gone == nil {
				gone = &st.Releases[i]
			}
		}
	}
	if target == nil && gone != nil {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum,
			Reason: why + "; this host stays where it is: the kept release " + gone.ID + " is not there (removed by hand?)"})
	}
	if target == nil {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum, Reason: why + "; no kept release here matches it, so this host stays where it is"})
	}
	if err := r.mayRunAgain(*target); err != nil {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum, Reason: why + "; this host stays where it is: " + err.Error()})
	}
	if view.Hold != nil {
		return stopHere(Outcome{Result: ResultSkipped, Checksum: st.Checksum, Reason: why + "; the switch waits: on hold"})
	}
	return decision{do: reasonPin, target: *target, words: why, pin: pin}
}

// underMaxFailed says whether a failure of checksum stays under the
// rollout's max_failed, counting the hosts that failed on it (this one
// included): then the breaker is not tripped yet.
func (r *Runner) underMaxFailed(ctx context.Context, checksum string) bool {
	p := r.svc.Rollout
	if p == nil || p.MaxFailed <= 1 {
		return false
	}
	view, err := r.records.Status(ctx, r.svc.Name)
	if err != nil {
		return false // cannot count: stop the rollout
	}
	failed := rollout.Failed(r.decider.Settle(view, r.now()), checksum) // this host's report is in
	if failed == 0 {
		failed = 1
	}
	if failed < p.MaxFailed {
		r.logger.Warn("rollout: failure counted, the rollout goes on", "checksum", checksum, "failed_hosts", failed, "max_failed", p.MaxFailed)
		return true
	}
	return false
}

// reasonSettle: the host registered a moment ago, and gives the others
// started with it time to register before it plans the waves.
const reasonSettle = "rollout: letting the fleet's hosts register first"

// registerSettle is how long a host waits after registering before its
// first rollout decision.
const registerSettle = 3 * time.Second

// reregisterSettle is the wait after registering again in a fleet that
// lost its records: longer than the followers' back-off.
const reregisterSettle = followBackoffCap + 5*time.Second

// followBackoffCap bounds the follower's back-off while Consul is away.
const followBackoffCap = 10 * time.Second

// rolloutPoll is how long a host waiting on a rollout sleeps when nothing
// wakes it: the fleet's changes (Agent.follow) and the decision's own
// time (a bake's end, a window's opening) normally come first.
const rolloutPoll = 15 * time.Second

// rolloutWait is when a host waiting on the rollout looks again: at the
// time its decision named, and during a bake often enough to see a gate
// fail.
func (r *Runner) rolloutWait(out Outcome) time.Duration {
	wait := rolloutPoll
	if r.coord != nil {
		wait = coordPoll // the coordinator asks the gates; its document wakes this host
	} else if p := r.svc.Rollout; p != nil && len(p.Gates) > 0 {
		wait = p.Recheck()
	}
	if !out.Until.IsZero() {
		until := time.Until(out.Until) + 10*time.Millisecond
		if r.coord != nil {
			// The time is the coordinator's, by its clock: once it has
			// passed here, the coordinator's next document wakes this
			// host (followDoc), and until then it looks only now and then.
			until = max(until, coordPassed)
			if strings.HasPrefix(out.Reason, reasonCoordPlan) {
				// The document the coordinator writes once it has
				// planned wakes this host (followDoc): thousands of
				// hosts polling meanwhile would only slow it down.
				until = max(until, coordPlanPoll)
			}
		}
		wait = min(wait, until)
	}
	return max(wait, 10*time.Millisecond)
}

// coordPlanPoll is how long a host waiting for the coordinator to plan
// looks again when its document does not wake it first.
const coordPlanPoll = 30 * time.Second

// coordPassed is how long a host waits on a coordinated rollout whose
// time (a bake's end, a window's opening) has passed by this host's clock
// while the document still says to wait.
const coordPassed = 5 * time.Second

// followGap is the least time between the starts of two queries of the
// fleet's records: a rollout writes many records at once, and each look
// of each host reads them. Counted from the query's start, so a change
// after a quiet spell (a breaker tripping) is acted on at once.
const followGap = time.Second

// follow wakes a service with a rollout when its fleet records change and
// it has something to do: it waits on the rollout, or the breaker tripped
// on what it runs (a revert), or a pin names it.
func (a *Agent) follow(ctx context.Context, r *Runner, w fleet.ServiceWatcher) {
	loop := blocking.Loop{MinGap: followGap, BackoffCap: followBackoffCap, Down: func(err error) {
		r.logger.Debug("following the fleet's records", "error", err)
	}}
	loop.Run(ctx, 0, func(ctx context.Context, index uint64) (uint64, error) {
		next, err := w.WaitService(ctx, r.svc.Name, index)
		if err != nil {
			return 0, err
		}
		// An index gone backwards is a new Consul: the loop starts over
		// from 0, and the answer to that says what changed.
		if next >= index && (r.rolloutWaiting() || a.mustAct(ctx, r)) {
			a.Trigger(r.svc.Name)
		}
		return next, nil
	})
}

// mustAct says whether the fleet asks this host to revert, to follow a
// pin, or to register again.
func (a *Agent) mustAct(ctx context.Context, r *Runner) bool {
	view, err := r.records.Status(ctx, r.svc.Name)
	if err != nil {
		return false
	}
	cur := r.Status().Checksum
	if p := rollout.Pinned(view.Pins, r.node); p != nil {
		return true
	}
	if !slices.ContainsFunc(view.Nodes, func(n fleet.NodeStatus) bool { return n.Node == r.node }) {
		return true // the fleet lost this host's record: register again
	}
	return r.svc.Rollout.OnFailure == rollout.OnFailureRevert && cur != "" && view.Breaker(cur) != nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
