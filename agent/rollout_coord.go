package agent

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/blocking"
	"github.com/dropshipd/dropship/lock"
)

// With slots whose coordinator decides the rollout (lock "consul"), the
// coordinator, one agent elected per service, is the only one that reads
// every host's record: it fixes the plan, decides each wave with the
// rollout's Decider (bake, gates, max_failed, approvals, windows, freezes)
// and writes one compact document. Every other host reads its own
// records, that document and its own wave, and waits on the document: its
// work does not grow with the fleet.

// coordPoll is how long a host waiting on a coordinated rollout sleeps
// when nothing wakes it: the document it follows normally comes first.
const coordPoll = time.Minute

// onceCoordWait bounds how long `agent --once` waits for a coordinator
// to plan the rollout and place the host.
const onceCoordWait = time.Minute

// Reasons of a host that waits for the coordinator itself.
const (
	reasonCoordPlan  = "rollout: waiting for the coordinator to plan "
	reasonCoordPlace = "rollout: waiting for the coordinator to place this host in a wave"
)

// coordinating says whether out waits for the coordinator to plan or to
// place the host: seconds, not a wave.
func coordinating(out Outcome) bool {
	return strings.HasPrefix(out.Reason, reasonCoordPlan) || out.Reason == reasonCoordPlace ||
		strings.HasPrefix(out.Reason, reasonMoved) // in line for the plan: the next check says why not
}

// reasonMoved begins the reason of a check whose wait in line ended
// (lock.ErrMoved): the next check decides.
var reasonMoved = "rollout: " + lock.ErrMoved.Error()

// briefer reads one host's share of the records (fleet/consul).
type briefer interface {
	Brief(ctx context.Context, service, node string) (fleet.Status, error)
}

// alongBriefer reads one host's share of the records and, in the same
// request, what the coordinator's next Rollout reads (fleet/consul).
type alongBriefer interface {
	BriefAlong(ctx context.Context, service, node string, coord any) (fleet.Status, error)
}

// ownRecords reads what this host needs of the fleet's records before it
// decides: all of them without a coordinator, its own and the operators'
// with one (and the coordinator's document and this host's wave with
// them, for the look at the rollout that follows).
func (r *Runner) ownRecords(ctx context.Context) (fleet.Status, error) {
	if b, ok := r.records.(briefer); ok && r.coord != nil {
		if v := r.fresh; v != nil { // read by the step before, in this pass
			r.fresh = nil
			return *v, nil
		}
		if a, ok := r.records.(alongBriefer); ok {
			return a.BriefAlong(ctx, r.svc.Name, r.node, r.coord)
		}
		return b.Brief(ctx, r.svc.Name, r.node)
	}
	return r.records.Status(ctx, r.svc.Name)
}

// coordGate decides from the coordinator's document whether this host's
// wave of sum is open, or (inLine) closed only until an earlier wave is
// done: then the host waits for its grant in line, and the coordinator
// grants it the moment its wave opens.
func (r *Runner) coordGate(ctx context.Context, sum string, inLine bool) *Outcome {
	doc, wave, err := r.coord.Rollout(ctx, sum)
	if err != nil {
		return &Outcome{Result: ResultError, Phase: PhaseLock, Checksum: sum, Err: fmt.Errorf("read the rollout: %w", err)}
	}
	soon := r.now().Add(2 * time.Second) // the document, which this host follows, normally wakes it first
	if inLine && (doc == nil || doc.Checksum != sum || wave == "") {
		// Not planned, or this host not placed, yet: it waits in line
		// meanwhile, as for a wave that opens by itself. The coordinator
		// grants it only once its plan places the host in an open wave,
		// and ends the wait when the wave does not open by itself: the
		// host is in line when the plan comes, rather than all the
		// hosts of the fleet reading the plan and getting in line then.
		r.logger.Info("rollout: waiting in line for the coordinator's plan", "checksum", sum)
		r.coord.Want(sum)
		return nil
	}
	switch {
	case doc == nil || doc.Checksum != sum:
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: reasonCoordPlan + sum, Until: soon, rollout: true}
	case wave == "":
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: reasonCoordPlace, Until: soon, rollout: true}
	}
	ws := doc.Wave(wave)
	if ws == nil {
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rollout wave " + wave + ": not in the coordinator's plan", Until: soon, rollout: true}
	}
	if !ws.Open && inLine && ws.Queue {
		r.logger.Info("rollout: waiting in line for this host's wave", "checksum", sum, "wave", wave, "reason", ws.Reason)
		r.coord.Want(sum)
		return nil
	}
	// Granted while the document says in line: the coordinator grants
	// the first hosts of a wave that opens by itself before it writes the
	// document that says so (whose write wakes every host). Only a grant
	// asked for this release says so: one asked for the release before
	// (a newer one published while the host waited) says nothing of
	// this release's waves.
	if !ws.Open && !(!inLine && ws.Queue && r.slotFor == sum) {
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rollout wave " + wave + ": " + ws.Reason, Until: ws.Until, rollout: true}
	}
	// The document may be any agent's (see the threat model); the window
	// is this host's own, by its own clock.
	if why, next := r.svc.Rollout.Closed(r.now()); why != "" {
		return &Outcome{Result: ResultSkipped, Checksum: sum, Reason: "rollout wave " + wave + ": " + why, Until: next, rollout: true}
	}
	r.logger.Info("rollout: this host's wave may start", "checksum", sum, "wave", wave)
	r.coord.Want(sum)
	return nil
}

// planner is the coordinator's side of the rollout: fleet/rollout's,
// tripping the breaker as a host does.
func (r *Runner) planner() *rollout.Coordinator {
	return &rollout.Coordinator{Service: r.svc.Name, Node: r.node, Decider: r.decider, Records: r.records, Now: r.now,
		Decide: func(ctx context.Context, view fleet.Status, sum, me string) (rollout.Decision, error) {
			dec, stop := r.decide(ctx, view, sum, me)
			if stop != nil && stop.Err != nil {
				return dec, stop.Err // the breaker could not be tripped: decided again next time
			}
			return dec, nil
		}}
}

// followDoc wakes a service whose coordinator decides the rollout when
// the coordinator's document changes in what this host acts on: its wave
// opens or its time changes while it waits, a pin names it, the breaker
// of what it runs tripped (a revert), or the records went (a Consul that
// lost its data: register again). A host at rest (rest.go) stops
// following a document that says nothing more will come (no rollout, a
// rollout done or stopped): the nudges in the announcements tell it of
// a pin or a breaker; a check that does not leave it at rest follows
// again.
func (a *Agent) followDoc(ctx context.Context, r *Runner) {
	var last string
	had, resumed := false, false
	for ctx.Err() == nil {
		fctx, pause := context.WithCancel(ctx)
		loop := blocking.Loop{MinGap: followGap, BackoffCap: followBackoffCap, Down: func(err error) {
			r.logger.Debug("following the rollout's document", "error", err)
		}}
		loop.Run(fctx, 0, func(ctx context.Context, index uint64) (uint64, error) {
			doc, next, err := r.coord.WaitRollout(ctx, index)
			if err != nil {
				return 0, err
			}
			state := doc.ActState()
			switch {
			case index == 0 && resumed:
				// Followed again after a rest: the document may have
				// changed meanwhile, for a host that waits on it now.
				if r.rolloutWaiting() && state != last {
					a.Trigger(r.svc.Name)
				}
			case index > 0 && next != index:
				switch {
				case doc == nil && had:
					a.Trigger(r.svc.Name)
				case r.rolloutWaiting() && state != last:
					a.Trigger(r.svc.Name)
				case doc != nil && r.mustActDoc(doc):
					a.Trigger(r.svc.Name)
				}
			}
			last, had = state, doc != nil
			if (doc == nil || doc.Done || doc.Trip != "") && !r.rolloutWaiting() && !r.inLine() && r.rest.mayRest() {
				pause()
			}
			return next, nil
		})
		pause()
		select {
		case <-ctx.Done():
		case <-r.rest.engage:
			resumed = true
		}
	}
}

// mustActDoc says whether the document asks this host to revert or to
// follow a pin.
func (r *Runner) mustActDoc(doc *lock.Rollout) bool {
	for _, glob := range doc.Pins {
		if ok, _ := path.Match(glob, r.node); ok {
			return true
		}
	}
	cur := r.Status().Checksum
	return r.svc.Rollout.OnFailure == rollout.OnFailureRevert && cur != "" && slices.Contains(doc.Breakers, cur)
}
