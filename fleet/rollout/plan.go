package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
	"sort"

	"github.com/dropshipd/dropship/fleet"
)

// Member is a host registered for the service, with its node tags.
type Member struct {
	Node string
	Tags []string
}

// Step is one wave of a plan: its name and its hosts, in order.
type Step struct {
	Name  string
	Nodes []string
}

// Plan puts members into waves for checksum: the canary (the hosts tagged
// "canary", else the first Canary hosts), then each wave in turn. The
// order of hosts is a hash of checksum and node name: the same on every
// host, and not always the same hosts first. Shares count all members;
// a wave whose share is already reached is empty.
func (p *Policy) Plan(checksum string, members []Member) []Step {
	return p.PlanFirst(checksum, members, nil)
}

// PlanFirst is Plan with the canary, unless hosts are tagged for it,
// taken first among ready, in its order, then in the hash order: the
// coordinator passes the hosts that run the release already and those
// waiting in line for it, so that the canary is granted as the rollout
// starts rather than once a host that has not yet found the release
// gets in line. The later waves are Plan's.
func (p *Policy) PlanFirst(checksum string, members []Member, ready []string) []Step {
	order := slices.Clone(members)
	key := func(node string) uint64 {
		h := sha256.Sum256([]byte(checksum + "\x00" + node))
		return binary.BigEndian.Uint64(h[:8])
	}
	sort.Slice(order, func(i, j int) bool {
		ki, kj := key(order[i].Node), key(order[j].Node)
		if ki != kj {
			return ki < kj
		}
		return order[i].Node < order[j].Node
	})
	placed := map[string]bool{}
	take := func(m Member) bool {
		if placed[m.Node] {
			return false
		}
		placed[m.Node] = true
		return true
	}
	var steps []Step
	if p.hasCanary() {
		s := Step{Name: p.WaveName(0)}
		for _, m := range order {
			if slices.Contains(m.Tags, CanaryTag) && take(m) {
				s.Nodes = append(s.Nodes, m.Node)
			}
		}
		in := map[string]bool{}
		for _, m := range order {
			in[m.Node] = true
		}
		first := []Member{}
		for _, n := range ready {
			if in[n] {
				first = append(first, Member{Node: n})
			}
		}
		for _, m := range append(first, order...) {
			if len(s.Nodes) > 0 && len(s.Nodes) >= p.Canary {
				break
			}
			if len(s.Nodes) < p.Canary && take(m) {
				s.Nodes = append(s.Nodes, m.Node)
			}
		}
		steps = append(steps, s)
	}
	for i, w := range p.Waves {
		idx := i
		if p.hasCanary() {
			idx++
		}
		s := Step{Name: p.WaveName(idx)}
		if w.Tag != "" {
			for _, m := range order {
				if slices.Contains(m.Tags, w.Tag) && take(m) {
					s.Nodes = append(s.Nodes, m.Node)
				}
			}
		} else {
			want := int(math.Ceil(float64(w.Percent) * float64(len(order)) / 100))
			for _, m := range order {
				if len(placed) >= want {
					break
				}
				if take(m) {
					s.Nodes = append(s.Nodes, m.Node)
				}
			}
		}
		steps = append(steps, s)
	}
	return steps
}

// WaveOf returns the index of node's wave in steps, or -1.
func WaveOf(steps []Step, node string) int {
	for i, s := range steps {
		if slices.Contains(s.Nodes, node) {
			return i
		}
	}
	return -1
}

// Fixed returns the plan of the rollout of checksum as written when it
// started (st.Plans), kept to the members: a host that left (forgotten,
// pinned) is taken out of its wave, and one that registered since goes
// into the last wave. Without a written plan it is Plan's. So a host that
// joins never moves another into an earlier wave, nor into one already
// approved.
func (p *Policy) Fixed(checksum string, st fleet.Status, members []Member) []Step {
	fixed, ok := st.Plans[checksum]
	if !ok || len(fixed) == 0 {
		return p.Plan(checksum, members)
	}
	in := map[string]bool{}
	for _, m := range members {
		in[m.Node] = true
	}
	placed := map[string]bool{}
	steps := make([]Step, len(fixed))
	for i, w := range fixed {
		steps[i].Name = w.Name
		for _, n := range w.Nodes {
			if in[n] && !placed[n] {
				steps[i].Nodes = append(steps[i].Nodes, n)
				placed[n] = true
			}
		}
	}
	last := &steps[len(steps)-1]
	for _, m := range members {
		if !placed[m.Node] {
			last.Nodes = append(last.Nodes, m.Node)
		}
	}
	return steps
}

// Waves is steps as a plan to write.
func Waves(steps []Step) []fleet.PlanWave {
	out := make([]fleet.PlanWave, len(steps))
	for i, s := range steps {
		out[i] = fleet.PlanWave{Name: s.Name, Nodes: s.Nodes}
	}
	return out
}
