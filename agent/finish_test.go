package agent_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/internal/rig/testutil"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// A fleet revert and a pin end as an install does, with real Consul:
// their outcome is finished once, inside the slot. The audit log holds
// one event of each, written with the node record that says what the
// host did, and the slot is given back.
func TestRevertAndPinFinishOnce(t *testing.T) {
	c := servers.Consul(t)
	prefix := "finish-" + testutil.Unique(t)
	e := newEnv(t)
	r, agentFleet, v2 := rolloutRunnerIn(t, e, fmt.Sprintf("address = %q\nprefix = %q", c.Addr, prefix), consul.Factory)
	ops, err := fleet.Shared(agentFleet)
	if err != nil {
		t.Fatal(err)
	}
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	// finished checks what the finish of one outcome leaves: want events
	// of each kind by this host in the audit log, the node record's
	// result, and no grant key of this host's (its slot given back).
	finished := func(result agent.Result, want map[string]int) {
		t.Helper()
		events, _, err := ops.Log(ctx, "app", 0)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		var last fleet.Event
		for _, ev := range events {
			if ev.Node == "test-node" {
				got[ev.Kind]++
				last = ev
			}
		}
		// The node record and the outcome's event in one request.
		rec, _, err := client.KV().Get(fleet.NodesKey(prefix, "app")+"test-node", nil)
		if err != nil || rec == nil {
			t.Fatalf("after the %s, no node record: %v", result, err)
		}
		if rec.ModifyIndex != last.Index {
			t.Errorf("after the %s, the node record (index %d) and its %s event (index %d) were not written together", result, rec.ModifyIndex, last.Kind, last.Index)
		}
		for kind, n := range want {
			if got[kind] != n {
				t.Errorf("after the %s: %d %q events in the audit log, want %d: %+v", result, got[kind], kind, n, events)
			}
		}
		st, err := ops.Status(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.Nodes {
			if n.Node == "test-node" && n.Result != string(result) {
				t.Errorf("after the %s, the node record says %q", result, n.Result)
			}
		}
		if kv, _, err := client.KV().Get(lockconsul.GrantKey(prefix, "app", "test-node"), nil); err != nil || kv != nil {
			t.Fatalf("after the %s, the host's grant key is still there: %v %s", result, err, kvValue(kv))
		}
	}

	b := fleet.Breaker{Checksum: v2, Node: "other", Phase: "gate", Error: "gate failed", Time: time.Now().UTC()}
	if err := agentFleet.Trip(ctx, "app", b); err != nil {
		t.Fatal(err)
	}
	e.check(r, agent.ResultReverted)
	if e.current() != "v1" {
		t.Fatalf("reverted to %q, want v1", e.current())
	}
	finished(agent.ResultReverted, map[string]int{fleet.EventRevert: 1, fleet.EventRollback: 0})

	if _, err := ops.SetPin(ctx, "app", "test-*", &fleet.Pin{Nodes: "test-*", Target: v2, Who: "ops", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	e.check(r, agent.ResultRolledBack)
	if e.current() != "v2" {
		t.Fatalf("pinned to v2, on %q", e.current())
	}
	finished(agent.ResultRolledBack, map[string]int{fleet.EventRevert: 1, fleet.EventRollback: 1})
}

func kvValue(kv *api.KVPair) string {
	if kv == nil {
		return ""
	}
	return string(kv.Value)
}
