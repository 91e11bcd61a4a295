package rollout

import (
	"context"
	"slices"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// WaveState is one wave of a rollout as `fleet status` and the dashboard
// show it.
type WaveState struct {
	Name    string   `json:"name"`
	Nodes   []string `json:"nodes"`
	Done    []string `json:"done"`
	Failed  []string `json:"failed,omitempty"`
	Running []string `json:"running,omitempty"`
	Waiting []string `json:"waiting,omitempty"`
	Reason  string   `json:"reason,omitempty"` // why the waiting hosts wait
	// Until is when the reason may change by itself (a bake's end, a
	// window's opening), if it may.
	Until    time.Time `json:"until,omitzero"`
	Approval bool      `json:"approval,omitempty"`
}

// Rolling is the checksum a service is rolling out: the one announced
// last, else the newest installed anywhere.
func Rolling(st fleet.Status) string {
	if st.Published != nil && st.Published.Checksum != "" {
		return st.Published.Checksum
	}
	newest, at := "", time.Time{}
	for _, n := range st.Nodes {
		if n.Result == "installed" && n.Time.After(at) {
			newest, at = n.Checksum, n.Time
		}
	}
	return newest
}

// Describe returns the waves of the rollout of checksum, and for each what
// its hosts wait on, as the first waiting host of the wave would decide.
// It asks the gates like a host would (the decider's cache is its own).
func (d *Decider) Describe(ctx context.Context, checksum string, st fleet.Status, now time.Time) []WaveState {
	steps := d.Policy.Fixed(checksum, st, Members(st, ""))
	nodes := map[string]fleet.NodeStatus{}
	for _, n := range st.Nodes {
		nodes[n.Node] = n
	}
	var out []WaveState
	for _, s := range steps {
		ws := WaveState{Name: s.Name, Nodes: s.Nodes, Approval: d.Policy.needsApproval(s.Name)}
		pr := waveProgress(s, checksum, nodes, st.Cleared)
		ws.Done, ws.Failed = pr.done, pr.failed
		for _, n := range pr.pending {
			if slices.Contains(st.Holders, n) {
				ws.Running = append(ws.Running, n)
			} else {
				ws.Waiting = append(ws.Waiting, n)
			}
		}
		if len(ws.Waiting) > 0 {
			dec := d.Decide(ctx, ws.Waiting[0], View{Service: st.Service, Checksum: checksum, Status: st, Now: now})
			switch {
			case dec.Trip != "":
				ws.Reason = dec.Trip
			case dec.Go:
				ws.Reason = "may start: waiting for a slot or for the next check"
			default:
				ws.Reason, ws.Until = dec.Reason, dec.Until
			}
		}
		out = append(out, ws)
	}
	return out
}
