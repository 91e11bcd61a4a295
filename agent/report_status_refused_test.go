package agent_test

import (
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
)

// A host whose token may append to the audit log but not write its node
// record: a deferral's event is written once, as with any fleet, not
// again at every look (once a second by default, which would push every
// other event out of the log).
func TestDeferralWhoseStatusIsRefusedIsLoggedOnce(t *testing.T) {
	e := newRefusedHost(t, "no-node-record", "/nodes/")
	r, admin, prefix, lock := e.runner, e.admin, e.prefix, e.lock
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	holdLock(t, lock)
	e.publish("v2")
	e.check(r, agent.ResultDeferred)
	e.check(r, agent.ResultDeferred)
	e.check(r, agent.ResultDeferred)
	evs, _, err := (&consul.Fleet{Client: admin, Prefix: prefix}).Log(t.Context(), "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, ev := range evs {
		got[ev.Kind]++
	}
	if got[fleet.EventInstall] != 1 || got[fleet.EventDefer] != 1 {
		t.Fatalf("audit log %v, want the install and the deferral once each\n%s", got, e.logs.String())
	}
}
