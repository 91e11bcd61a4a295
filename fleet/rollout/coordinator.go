package rollout

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/lock"
)

// Coordinator decides a rollout for the whole fleet, for the agent that
// coordinates the service's slots (lock.Planner): it alone reads every
// host's record, fixes the plan when the rollout starts, and decides each
// wave as a host of that wave would (Decide), into one document whose
// size grows with the waves, not the fleet.
type Coordinator struct {
	Service string
	Node    string // the coordinating host
	Decider *Decider
	Records fleet.Operator
	Now     func() time.Time
	// Decide, if set, decides for host me and trips the breaker when
	// the decision says to (a gate failed, max_failed reached); else the
	// Decider's decision is taken as it is.
	Decide func(ctx context.Context, view fleet.Status, checksum, me string) (Decision, error)

	// The records of the last decision, for PlanSoon: the view, of
	// which release, its document, and when every record was read last.
	mu       sync.Mutex
	last     *fleet.Status
	lastSum  string
	lastDoc  lock.Rollout
	lastFull time.Time
}

// Bounds of PlanSoon: it reads the records of at most soonHosts hosts,
// and takes the others' from a full read at most soonFor old.
const (
	soonHosts = 1024
	soonFor   = 10 * time.Second
)

var _ lock.SoonPlanner = (*Coordinator)(nil)

// PlanSoon decides as Plan does, when a wave's last host is done, from
// the records that can have changed since the last decision: the hosts
// of open waves not done yet, and the operators' records (hold,
// breakers, freeze, pins, approvals, clears), read afresh; every other
// host's record as the last full read found it (at most soonFor ago).
// A host done stays done, and a host of a closed wave installs nothing,
// so what opens the next wave is read afresh; a host registered since
// goes into the last wave, and a rollout is said done only from a full
// read. Plan, when the records cannot be read so (no full read of this
// release recent enough, too many hosts, records that cannot be read
// by host).
func (c *Coordinator) PlanSoon(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	r, ok := c.Records.(interface {
		RecordsOf(ctx context.Context, service string, nodes []string) (fleet.Status, error)
	})
	c.mu.Lock()
	last, lastDoc := c.last, c.lastDoc
	fresh := last != nil && c.lastSum == sum && time.Since(c.lastFull) < soonFor
	c.mu.Unlock()
	if !ok || !fresh || last.Plans[sum] == nil {
		return c.Plan(ctx, sum)
	}
	on := map[string]bool{}
	for _, n := range last.Nodes {
		on[n.Node] = n.Checksum == sum
	}
	var nodes []string
	for _, s := range c.Decider.Policy.Fixed(sum, *last, Members(*last, "")) {
		if ws := lastDoc.Wave(s.Name); ws == nil || !ws.Open {
			continue
		}
		for _, n := range s.Nodes {
			if !on[n] {
				nodes = append(nodes, n)
			}
		}
	}
	if len(nodes) > soonHosts {
		return c.Plan(ctx, sum)
	}
	part, err := r.RecordsOf(ctx, c.Service, nodes)
	if err != nil {
		return lock.Rollout{Checksum: sum}, nil, err
	}
	view := part
	view.Plans = last.Plans
	fresh2 := map[string]fleet.NodeStatus{}
	for _, n := range part.Nodes {
		fresh2[n.Node] = n
	}
	asked := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		asked[n] = true
	}
	view.Nodes = make([]fleet.NodeStatus, 0, len(last.Nodes))
	for _, n := range last.Nodes {
		if f, ok := fresh2[n.Node]; ok {
			n = f
		} else if asked[n.Node] {
			continue // read afresh and gone: forgotten, as a full read finds it
		}
		view.Nodes = append(view.Nodes, n)
	}
	doc, waves, err := c.decideFrom(ctx, sum, view)
	if err != nil || doc.Done {
		return c.Plan(ctx, sum)
	}
	c.mu.Lock()
	c.last, c.lastDoc = &view, doc
	c.mu.Unlock()
	return doc, waves, nil
}

var _ lock.Planner = (*Coordinator)(nil)

func (c *Coordinator) decide(ctx context.Context, view fleet.Status, sum, me string) (Decision, error) {
	if c.Decide != nil {
		return c.Decide(ctx, view, sum, me)
	}
	return c.Decider.Decide(ctx, me, View{Service: c.Service, Checksum: sum, Status: view, Now: c.now()}), nil
}

// records reads what the coordinator decides from: Records.Records when
// it has it (the records without the slots), else Records.Status.
func (c *Coordinator) records(ctx context.Context) (fleet.Status, error) {
	if r, ok := c.Records.(interface {
		Records(ctx context.Context, service string) (fleet.Status, error)
	}); ok {
		return r.Records(ctx, c.Service)
	}
	return c.Records.Status(ctx, c.Service)
}

func (c *Coordinator) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// samePolicy says whether every registered host has the coordinator's
// rollout policy: only then is a plan it makes the fleet's.
func (c *Coordinator) samePolicy(view fleet.Status) bool {
	mine := c.Decider.Policy.Hash()
	for _, n := range view.Nodes {
		if n.Policy != mine {
			return false
		}
	}
	return true
}

// Plan reads every host's record, fixes the plan of sum when the rollout
// starts, and decides each wave. It returns the document and each planned
// host's wave.
func (c *Coordinator) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	return c.PlanLine(ctx, sum, nil)
}

// PlanLine is Plan, the canary of a plan fixed now taken first among
// the hosts that run sum already, then among inLine, the hosts waiting
// in line for it (lock.LinePlanner). A plan is fixed once: later
// decisions keep its canary whatever the line. (One that cannot be
// fixed, the hosts not agreeing on the policy, opens no wave.)
func (c *Coordinator) PlanLine(ctx context.Context, sum string, inLine []string) (lock.Rollout, map[string]string, error) {
	p := c.Decider.Policy
	doc := lock.Rollout{Checksum: sum}
	read := time.Now()
	view, err := c.records(ctx)
	if err != nil {
		return doc, nil, err
	}
	if _, fixed := view.Plans[sum]; !fixed && c.samePolicy(view) {
		// Fixed when the rollout starts: a host that registers later goes
		// into the last wave, and no host moves into an earlier or an
		// approved wave.
		// A host that runs sum already comes first: after a Consul
		// that lost its data, the plan is fixed again, and the canary
		// that installed the release stays the canary.
		var ready []string
		for _, n := range view.Nodes {
			if n.Checksum == sum {
				ready = append(ready, n.Node)
			}
		}
		slices.Sort(ready)
		steps := p.PlanFirst(sum, Members(view, ""), append(ready, inLine...))
		fixed, err := c.Records.FixPlan(ctx, c.Service, sum, Waves(steps))
		if err != nil {
			return doc, nil, fmt.Errorf("fix the rollout's plan: %w", err)
		}
		if fixed {
			// Written as planned here: the records need not be read again
			// (thousands of them) to learn it.
			if view.Plans == nil {
				view.Plans = map[string][]fleet.PlanWave{}
			}
			view.Plans[sum] = Waves(steps)
		} else if view, err = c.records(ctx); err != nil { // another fixed it first
			return doc, nil, err
		}
	}
	doc, waves, err := c.decideFrom(ctx, sum, view)
	if err == nil {
		c.mu.Lock()
		c.last, c.lastSum, c.lastDoc, c.lastFull = &view, sum, doc, read
		c.mu.Unlock()
	}
	return doc, waves, err
}

// decideFrom decides each wave of sum from view.
func (c *Coordinator) decideFrom(ctx context.Context, sum string, view fleet.Status) (lock.Rollout, map[string]string, error) {
	p := c.Decider.Policy
	doc := lock.Rollout{Checksum: sum}
	now := c.now()
	if view.Hold != nil {
		doc.Hold = view.Hold.Who + ": " + view.Hold.Reason
	}
	if f := view.Freeze; f != nil && (f.Until.IsZero() || now.Before(f.Until)) {
		doc.Freeze = f.Who + ": " + f.Reason
	}
	for _, pin := range view.Pins {
		doc.Pins = append(doc.Pins, pin.Nodes)
	}
	for _, b := range view.Breakers {
		doc.Breakers = append(doc.Breakers, b.Checksum)
	}
	slices.Sort(doc.Pins)
	slices.Sort(doc.Breakers)
	steps := p.Fixed(sum, view, Members(view, ""))
	on := map[string]bool{}
	for _, n := range view.Nodes {
		on[n.Node] = n.Checksum == sum
	}
	waves := map[string]string{}
	doc.Done = true
	for _, s := range steps {
		for _, n := range s.Nodes {
			waves[n] = s.Name
			if !on[n] {
				doc.Done = false
				if doc.WaitingOn == "" {
					doc.WaitingOn = n
				}
			}
		}
	}
	// Once the breaker is tripped no wave opens, and the gate that
	// tripped it is not asked again.
	var closed string
	if b := view.Breaker(sum); b != nil {
		closed = fmt.Sprintf("%s failed on %s in %s: %s", sum, b.Node, b.Phase, b.Error)
		doc.Trip = closed
	} else if !c.samePolicy(view) {
		dec, err := c.decide(ctx, view, sum, c.Node)
		if err != nil {
			return doc, nil, err
		}
		closed = dec.Reason
	}
	for _, s := range steps {
		ws := lock.WaveState{Name: s.Name, Hosts: len(s.Nodes)}
		for _, n := range s.Nodes {
			if on[n] {
				ws.Done++
			}
		}
		switch {
		case closed != "":
			ws.Reason = closed
		case len(s.Nodes) == 0:
			ws.Reason = "no hosts in this fleet"
		default:
			// Every host of a wave is decided alike: its first speaks
			// for it.
			dec, err := c.decide(ctx, view, sum, s.Nodes[0])
			if err != nil {
				return doc, nil, err
			}
			if dec.Trip != "" {
				doc.Trip, closed, ws.Reason = dec.Trip, dec.Trip, dec.Trip
				break
			}
			ws.Open, ws.Reason, ws.Until = dec.Go, dec.Reason, dec.Until
			ws.Queue = !dec.Go && strings.HasPrefix(dec.Reason, reasonEarlierWave)
			if !ws.Until.IsZero() && len(p.Gates) > 0 {
				doc.Again = now.Add(p.Recheck()) // the gates are asked during the bake
			}
		}
		doc.Waves = append(doc.Waves, ws)
	}
	return doc, waves, nil
}
