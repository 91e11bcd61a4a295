package agent_test

import (
	"strings"
	"testing"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
)

// A revert goes back past any release the fleet refused; a breaker
// tripped on the chosen release while the host waited for its slot
// counts too: the host does not go back onto it.
func TestRevertTargetRefusedWhileWaitingForTheSlot(t *testing.T) {
	e := newEnv(t)
	ff := &fakeFleet{}
	r, v2 := rolloutRunner(t, e, ff)
	v1 := e.state_(r).Releases[0].Checksum
	ff.st.Breakers = []fleet.Breaker{{Checksum: v2, Node: "other", Phase: "gate"}}
	ff.onAcquire = func(st *fleet.Status) {
		st.Breakers = append(st.Breakers, fleet.Breaker{Checksum: v1, Node: "other", Phase: "check"})
	}
	out := e.check(r, agent.ResultSkipped)
	if e.current() != "v2" {
		t.Fatalf("reverted to %s, refused by the fleet while the host waited for its slot", e.current())
	}
	if !strings.Contains(out.Reason, v1) {
		t.Fatalf("reason %q does not name the release refused meanwhile", out.Reason)
	}
	// The next check decides afresh: nothing older to go back to.
	ff.onAcquire = nil
	out = e.check(r, agent.ResultSkipped)
	if !strings.Contains(out.Reason, "cannot") || e.current() != "v2" {
		t.Fatalf("then: %q, on %s", out.Reason, e.current())
	}
}
