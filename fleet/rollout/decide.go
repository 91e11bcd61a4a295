package rollout

import (
	"context"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// View is the fleet as one host sees it when it decides.
type View struct {
	Service  string
	Checksum string // the release rolling out
	Status   fleet.Status
	Now      time.Time
}

// Decision is whether a host may start installing the release now.
type Decision struct {
	Go     bool
	Wave   string    // the host's wave
	Reason string    // why not yet
	Until  time.Time // when to look again; zero: when the fleet changes
	// Trip, when set, is why the rollout must stop: a gate failed, or
	// max_failed hosts failed. The caller trips the breaker with it, in
	// TripPhase ("gate" or "max_failed").
	Trip      string
	TripPhase string
}

// Phases of the breakers a rollout trips.
const (
	PhaseGate      = "gate"
	PhaseMaxFailed = "max_failed"
)

// Decider applies a policy. It remembers which waves' gates have held,
// so a host does not ask the metrics again for a bake already judged.
type Decider struct {
	Policy *Policy
	mu     sync.Mutex
	held   map[string]string // checksum/wave/end -> verdict detail
	// seen is, by record and its time, the time Settle gave each record
	// when this decider first saw it; last is when it last read them.
	seen map[string]time.Time
	last time.Time
}

// NewDecider returns a decider for p.
func NewDecider(p *Policy) *Decider {
	return &Decider{Policy: p, held: map[string]string{}, seen: map[string]time.Time{}}
}

// Settle returns st with the times that drive decisions (hosts' reports,
// clears) replaced, where a writer's clock cannot be trusted, by when this
// decider first saw them. Dated ahead of now by more than
// fleet.ClockSkew: a host whose clock runs ahead, or a record edited by
// hand, would otherwise hold a bake until its date, or hide the failures
// after a clear. Written since this decider's last read but dated before
// it (by more than fleet.ClockSkew): a host whose clock runs behind would
// otherwise end a bake, or count a clear, before it began. Records in a
// decider's first read are taken as dated: a coordinator that takes over
// cannot tell when they were written. st itself is left as it is.
func (d *Decider) Settle(st fleet.Status, now time.Time) fleet.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[string]time.Time{} // only the records still there
	last := d.last
	settle := func(key string, t time.Time) time.Time {
		key += "\x00" + t.UTC().Format(time.RFC3339Nano)
		first, ok := d.seen[key]
		if !ok {
			first = t
			if fleet.Ahead(t, now) || (!last.IsZero() && t.Before(last.Add(-fleet.ClockSkew))) {
				first = now
			}
		}
		seen[key] = first
		if fleet.Ahead(t, now) || first.After(t) {
			return first
		}
		return t
	}
	nodes := make([]fleet.NodeStatus, len(st.Nodes))
	for i, n := range st.Nodes {
		n.Time = settle("node\x00"+n.Node, n.Time)
		nodes[i] = n
	}
	st.Nodes = nodes
	if st.Cleared != nil {
		cleared := make(map[string]time.Time, len(st.Cleared))
		for sum, t := range st.Cleared {
			cleared[sum] = settle("cleared\x00"+sum, t)
		}
		st.Cleared = cleared
	}
	d.seen = seen
	if now.After(d.last) {
		d.last = now
	}
	return st
}

// Pinned returns the pin that holds node, if any.
func Pinned(pins []fleet.Pin, node string) *fleet.Pin {
	for i := range pins {
		if ok, _ := path.Match(pins[i].Nodes, node); ok {
			return &pins[i]
		}
	}
	return nil
}

// Members are the hosts in waves: every registered host but the pinned.
func Members(st fleet.Status, me string) []Member {
	var out []Member
	seen := false
	for _, n := range st.Nodes {
		if Pinned(st.Pins, n.Node) != nil {
			continue
		}
		seen = seen || n.Node == me
		out = append(out, Member{Node: n.Node, Tags: n.Tags})
	}
	if !seen && me != "" && Pinned(st.Pins, me) == nil {
		out = append(out, Member{Node: me})
	}
	return out
}

// progress is how far one wave is on a checksum.
type progress struct {
	done, failed, pending []string
	doneAt                time.Time // the last host's install or failure
	// watched is the shortest health watch among the done hosts (0 when
	// one did not watch): each was healthy for that long after its switch.
	watched time.Duration
}

// served says whether the wave's hosts watched their health for the
// whole bake (watch = "bake"): the bake then ends with the wave, since
// every host was seen healthy for it, each after its own switch.
func (p progress) served(bake time.Duration) bool {
	return bake > 0 && len(p.done) > 0 && p.watched >= bake
}

// counts says whether a node's record is a failure of checksum that
// counts toward max_failed: the release's fault, and since the last clear.
func counts(n fleet.NodeStatus, checksum string, cleared map[string]time.Time) bool {
	return n.Result == "failed" && n.Counted && n.Attempt == checksum && checksum != "" && n.Time.After(cleared[checksum])
}

// Failed counts the hosts whose failure of checksum counts toward
// max_failed.
func Failed(st fleet.Status, checksum string) int {
	n := 0
	for _, ns := range st.Nodes {
		if counts(ns, checksum, st.Cleared) {
			n++
		}
	}
	return n
}

// waveProgress sorts a wave's hosts: done (on checksum), failed (a failure
// that counts toward max_failed), pending (everything else, including a
// host that failed for its own reasons: it tries again, and its wave waits).
func waveProgress(s Step, checksum string, nodes map[string]fleet.NodeStatus, cleared map[string]time.Time) progress {
	var p progress
	for _, n := range s.Nodes {
		st := nodes[n]
		switch {
		case st.Checksum == checksum && checksum != "":
			if len(p.done) == 0 || st.Watched < p.watched {
				p.watched = st.Watched
			}
			p.done = append(p.done, n)
		case counts(st, checksum, cleared):
			p.failed = append(p.failed, n)
		default:
			p.pending = append(p.pending, n)
			continue
		}
		if st.Time.After(p.doneAt) {
			p.doneAt = st.Time
		}
	}
	return p
}

// Decide says whether host me may start installing v.Checksum now, and
// if not, why and until when. In order: a freeze, hosts whose policy
// differs, earlier waves not done, the bake and its gates, approval, the
// window.
func (d *Decider) Decide(ctx context.Context, me string, v View) Decision {
	p := d.Policy
	st := d.Settle(v.Status, v.Now)
	if f := st.Freeze; f != nil && (f.Until.IsZero() || v.Now.Before(f.Until)) {
		dec := Decision{Reason: "frozen by " + f.Who + ": " + f.Reason}
		if !f.Until.IsZero() {
			dec.Reason += " (until " + f.Until.Format(time.RFC3339) + ")"
			dec.Until = f.Until
		}
		return dec
	}
	mine := p.Hash()
	var differ []string
	for _, n := range st.Nodes {
		if n.Node != me && n.Policy != mine {
			differ = append(differ, fmt.Sprintf("%s has %s", n.Node, orNone(n.Policy)))
		}
	}
	if len(differ) > 0 {
		return Decision{Reason: fmt.Sprintf("rollout policy differs (this host has %s): %s", mine, strings.Join(differ, ", "))}
	}
	// Hosts failing at once may each have counted before the others
	// reported: whoever decides next trips the breaker.
	if failed := Failed(st, v.Checksum); failed >= p.MaxFailed && st.Breaker(v.Checksum) == nil {
		return Decision{Trip: fmt.Sprintf("%d hosts failed %s (max_failed = %d)", failed, v.Checksum, p.MaxFailed), TripPhase: PhaseMaxFailed}
	}
	steps := p.Fixed(v.Checksum, st, Members(st, me))
	k := WaveOf(steps, me)
	if k < 0 {
		return Decision{Reason: "not in any wave"}
	}
	dec := Decision{Wave: steps[k].Name}
	nodes := map[string]fleet.NodeStatus{}
	for _, n := range st.Nodes {
		nodes[n.Node] = n
	}
	// Every earlier wave done; the bake counts from the last one's end.
	var last progress
	prev := -1
	for j := 0; j < k; j++ {
		if len(steps[j].Nodes) == 0 {
			continue
		}
		pr := waveProgress(steps[j], v.Checksum, nodes, st.Cleared)
		if len(pr.pending) > 0 {
			dec.Reason = fmt.Sprintf(reasonEarlierWave+"%s: %d of %d hosts done (%s to go)", steps[j].Name,
				len(pr.done)+len(pr.failed), len(steps[j].Nodes), list(pr.pending))
			var deferring []string
			for _, n := range pr.pending {
				if r := nodes[n]; r.Result == "deferred" && r.Attempt == v.Checksum {
					deferring = append(deferring, n)
				}
			}
			if len(deferring) > 0 {
				dec.Reason += "; the application defers it on " + list(deferring)
			}
			return dec
		}
		last, prev = pr, j
	}
	if prev >= 0 {
		from, end := last.doneAt, last.doneAt.Add(p.Bake)
		if last.served(p.Bake) {
			// Watched through the bake: judge the gates over it, now.
			from, end = last.doneAt.Add(-p.Bake), last.doneAt
		}
		// The bake judged is this one: the wave's end is in the key, so a
		// wave that ends again (a host that joined it, a checksum cleared
		// and installed anew) is judged again.
		key := v.Checksum + "/" + steps[prev].Name + "/" + last.doneAt.UTC().Format(time.RFC3339Nano)
		if v.Now.Before(end) {
			if trip := d.judge(ctx, p, steps[prev].Name, from, v.Now, false); trip != "" {
				dec.Trip, dec.TripPhase = trip, PhaseGate
				return dec
			}
			dec.Reason = fmt.Sprintf("baking wave %s until %s", steps[prev].Name, end.Format(time.RFC3339))
			dec.Until = end
			return dec
		}
		if !d.passed(key) {
			if trip := d.judge(ctx, p, steps[prev].Name, from, end, true); trip != "" {
				if strings.HasPrefix(trip, "?") { // the gate could not be asked: wait
					dec.Reason = trip[1:]
					dec.Until = v.Now.Add(recheck(p.Bake))
					return dec
				}
				dec.Trip, dec.TripPhase = trip, PhaseGate
				return dec
			}
			d.mu.Lock()
			d.held[key] = "held"
			d.mu.Unlock()
		}
	}
	// An earlier wave left empty in this fleet (its share rounds to hosts
	// already placed, no host has its tag) has nobody to wait for its
	// approval: the next hosts wait for it, or it would never be asked.
	for j := 0; j <= k; j++ {
		name := steps[j].Name
		if (j == k || len(steps[j].Nodes) == 0) && p.needsApproval(name) && !approved(st.Approvals, v.Checksum, name) {
			dec.Reason = fmt.Sprintf("waiting for approval of wave %s: dropship fleet approve %s --wave %s", name, v.Service, name)
			if j < k {
				dec.Reason += fmt.Sprintf(" (wave %s has no hosts in this fleet; wave %s comes after it)", name, dec.Wave)
			}
			return dec
		}
	}
	if why, next := p.Closed(v.Now); why != "" {
		dec.Reason, dec.Until = why, next
		return dec
	}
	dec.Go = true
	return dec
}

// reasonEarlierWave starts the reason of a host whose wave waits for an
// earlier one to be done.
const reasonEarlierWave = "waiting for wave "

// Closed says why the deploy window is closed at now ("" when it is open
// or there is none) and when it opens (zero when not known).
func (p *Policy) Closed(now time.Time) (why string, opens time.Time) {
	w := p.Window
	if w == nil {
		return "", time.Time{}
	}
	open, next := w.Open(now)
	if open {
		return "", time.Time{}
	}
	why = "outside the deploy window (" + w.Days + " " + w.Hours + " " + w.Timezone + ")"
	if !next.IsZero() {
		why += "; opens " + next.Format(time.RFC3339)
	}
	return why, next
}

func (d *Decider) passed(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.held[key]
	return ok
}

// judge runs the gates over [from, to]. It returns "" when they hold, the
// reason to trip when one failed, and "?reason" when one could not be
// asked (final) — a gate that cannot be asked proves nothing. Mid-bake
// (final false) an error is not a failure: the final judgement decides.
func (d *Decider) judge(ctx context.Context, p *Policy, wave string, from, to time.Time, final bool) string {
	if to.Sub(from) < time.Second {
		return ""
	}
	for _, g := range p.Gates {
		v, err := g.Check(ctx, from, to)
		if err != nil {
			if final {
				return fmt.Sprintf("?gate %s after wave %s could not be asked: %v", g.Name(), wave, err)
			}
			continue
		}
		if !v.OK {
			return fmt.Sprintf("gate %s failed during the bake of wave %s: %s", g.Name(), wave, v.Detail)
		}
	}
	return ""
}

// recheck is how often a host asks again while it waits on a gate.
func recheck(bake time.Duration) time.Duration {
	return min(max(bake/4, time.Second), 15*time.Second)
}

// Recheck is how often a host waiting in a bake asks its gates.
func (p *Policy) Recheck() time.Duration { return recheck(p.Bake) }

func approved(as []fleet.Approval, checksum, wave string) bool {
	for _, a := range as {
		if a.Checksum == checksum && a.Wave == wave {
			return true
		}
	}
	return false
}

func orNone(s string) string {
	if s == "" {
		return "no rollout block"
	}
	return s
}

func list(nodes []string) string {
	nodes = slices.Clone(nodes)
	sort.Strings(nodes)
	if len(nodes) > 5 {
		return strings.Join(nodes[:5], ", ") + fmt.Sprintf(" and %d more", len(nodes)-5)
	}
	return strings.Join(nodes, ", ")
}
