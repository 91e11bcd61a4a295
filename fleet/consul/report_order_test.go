package consul

import (
	"context"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// A failure and its switch back are reported at one time (the agent's
// clock at the outcome): the log still says the failure first.
func TestReportEventsKeepsTheOutcomesOrder(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "web-1")
	for i := range 20 {
		ns := fleet.NodeStatus{Node: "web-1", Checksum: "old", Attempt: "new", Result: "failed", Phase: "check",
			Error: "check failed", Time: time.Now().UTC()}
		if err := p.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
			t.Fatal(err)
		}
		evs, _, err := p.Log(ctx, "app", 0)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(evs); n != 2*(i+1) || evs[n-2].Kind != fleet.EventFailure || evs[n-1].Kind != fleet.EventRollback {
			t.Fatalf("report %d: log ends %s, %s: want the failure, then the switch back", i, evs[n-2].Kind, evs[n-1].Kind)
		}
	}
}
