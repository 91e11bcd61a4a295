package consul

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// The coordinator's plan takes the canary among the hosts in line for
// the release when it fixes the plan; once fixed, the hosts in line do
// not change it.
func TestPlanLinePicksTheCanaryAmongTheHostsInLine(t *testing.T) {
	ctx := context.Background()
	policy := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{{Percent: 10}, {Percent: 100}}, MaxFailed: 1, OnFailure: rollout.OnFailureStop}
	prefix := "test/" + testutil.Unique(t)
	const n = 20
	var ms []rollout.Member
	for i := range n {
		f, _ := countedFleet(t, prefix, fmt.Sprintf("host-%02d", i))
		if err := f.Report(ctx, "app", fleet.NodeStatus{Node: f.Node, Result: "registered", Time: time.Now().UTC(), Policy: policy.Hash()}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, rollout.Member{Node: f.Node})
	}
	rec, _ := countedFleet(t, prefix, "host-00")
	c := &rollout.Coordinator{Service: "app", Node: "host-00", Decider: rollout.NewDecider(policy), Records: rec}
	plain := policy.Plan("sum1", ms)
	var late string // a host the hash order puts in the last wave
	for _, node := range plain[len(plain)-1].Nodes {
		late = node
	}
	doc, waves, err := c.PlanLine(ctx, "sum1", []string{late})
	if err != nil {
		t.Fatal(err)
	}
	canary := doc.Waves[0].Name
	if waves[late] != canary || !doc.Waves[0].Open {
		t.Fatalf("%s, the host in line, is in wave %q; the canary is %q (%+v)", late, waves[late], canary, doc)
	}
	_, waves, err = c.PlanLine(ctx, "sum1", []string{plain[0].Nodes[0], "host-03"})
	if err != nil {
		t.Fatal(err)
	}
	if waves[late] != canary || waves[plain[0].Nodes[0]] == canary {
		t.Fatalf("the next decision moved the canary: %s in %q, %s in %q", late, waves[late], plain[0].Nodes[0], waves[plain[0].Nodes[0]])
	}
}

// A host that runs the release already comes before the hosts in line:
// when the plan is fixed again (a Consul that lost its data mid-rollout),
// the canary that installed the release stays the canary.
func TestPlanLineKeepsAHostThatRunsTheReleaseAsTheCanary(t *testing.T) {
	ctx := context.Background()
	policy := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{{Percent: 50}, {Percent: 100}}, MaxFailed: 1, OnFailure: rollout.OnFailureStop}
	prefix := "test/" + testutil.Unique(t)
	var ms []rollout.Member
	for i := range 8 {
		f, _ := countedFleet(t, prefix, fmt.Sprintf("host-%02d", i))
		st := fleet.NodeStatus{Node: f.Node, Result: "registered", Time: time.Now().UTC(), Policy: policy.Hash()}
		if i == 5 {
			st.Checksum, st.Result = "sum1", "installed" // the canary of the plan lost
		}
		if err := f.Report(ctx, "app", st); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, rollout.Member{Node: f.Node})
	}
	rec, _ := countedFleet(t, prefix, "host-00")
	c := &rollout.Coordinator{Service: "app", Node: "host-00", Decider: rollout.NewDecider(policy), Records: rec}
	doc, waves, err := c.PlanLine(ctx, "sum1", []string{"host-01", "host-02"})
	if err != nil {
		t.Fatal(err)
	}
	if canary := doc.Waves[0].Name; waves["host-05"] != canary || waves["host-01"] == canary {
		t.Fatalf("host-05, on the release, is in wave %q, host-01 (in line) in %q; the canary is %q", waves["host-05"], waves["host-01"], canary)
	}
}
