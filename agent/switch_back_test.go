package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// consulRolloutRunner is rolloutRunner with the rig's Consul as the
// fleet, under a prefix of the test's own.
func consulRolloutRunner(t *testing.T, e *env) (*agent.Runner, fleet.Agent, string) {
	t.Helper()
	c := servers.Consul(t)
	prefix := "att-" + testutil.Unique(t)
	return rolloutRunnerIn(t, e, fmt.Sprintf("address = %q\nprefix = %q", c.Addr, prefix), consul.Factory)
}

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

// A kept release whose directory was removed by hand is no way back: a
// revert goes further back, to one that is there, not into an error at
// every check.
func TestRevertPastAReleaseRemovedByHand(t *testing.T) {
	e := newEnv(t)
	plain := e.runner(e.config(""))
	e.publish("v0")
	e.check(plain, agent.ResultInstalled)
	r, agentFleet, v2 := consulRolloutRunner(t, e)
	st := e.state_(r)
	if len(st.Releases) != 3 {
		t.Fatalf("kept %d releases, want 3", len(st.Releases))
	}
	if err := os.RemoveAll(filepath.Join(r.Dir(), "releases", st.Releases[1].ID)); err != nil {
		t.Fatal(err)
	}
	if err := agentFleet.Trip(t.Context(), "app", fleet.Breaker{Checksum: v2, Node: "other", Phase: "gate", Error: "gate failed", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	out := r.Check(t.Context())
	if out.Result != agent.ResultReverted || e.current() != "v0" {
		t.Fatalf("revert with v1 removed by hand: %s (%v %s), on %q, want reverted to v0", out.Result, out.Err, out.Reason, e.current())
	}
	if st := e.state_(r); st.SwitchBack != nil || st.LastError != "" {
		t.Fatalf("the state says switch back %+v, last error %q", st.SwitchBack, st.LastError)
	}
}

// A pin whose kept release was removed by hand: the host stays where it
// is and says why, as when no kept release matches.
func TestPinOfAReleaseRemovedByHand(t *testing.T) {
	e := newEnv(t)
	r, agentFleet, _ := consulRolloutRunner(t, e)
	st := e.state_(r)
	v1 := st.Releases[0]
	if err := os.RemoveAll(filepath.Join(r.Dir(), "releases", v1.ID)); err != nil {
		t.Fatal(err)
	}
	ops, err := fleet.Shared(agentFleet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ops.SetPin(t.Context(), "app", "test-*", &fleet.Pin{Nodes: "test-*", Target: v1.Checksum, Who: "ops", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	out := r.Check(t.Context())
	if out.Result != agent.ResultSkipped || !strings.Contains(out.Reason, "stays where it is") || e.current() != "v2" {
		t.Fatalf("pin of a removed release: %s (%v %s), on %q", out.Result, out.Err, out.Reason, e.current())
	}
}

// The slot lost (a Consul session expired) before a revert switches:
// another host may hold it now, so the revert waits for the next check,
// as an install does.
func TestRevertSlotLostBeforeTheSwitch(t *testing.T) {
	e := newEnv(t)
	ff := &fakeFleet{}
	r, v2 := rolloutRunner(t, e, ff)
	ff.st.Breakers = []fleet.Breaker{{Checksum: v2, Node: "other", Phase: "gate"}}
	lost := make(chan struct{})
	close(lost)
	ff.lost = lost
	out := r.Check(t.Context())
	if e.current() != "v2" {
		t.Fatalf("reverted to %s without the slot (%s)", e.current(), out.Result)
	}
	ff.lost = nil
	e.check(r, agent.ResultReverted)
	if e.current() != "v1" {
		t.Fatalf("reverted to %q, want v1", e.current())
	}
}

// A switch to a pinned release interrupted after the switch, and the key
// that signed that release revoked before the restart: the intent is
// dropped, and the destination put back on the release it left, whose
// after hooks run again. The host neither runs a release of a revoked
// key nor has a state that names another release than it runs.
func TestInterruptedSwitchBackToARevokedRelease(t *testing.T) {
	old, next := newSigner(t), newSigner(t)
	e := newEnv(t)
	hook := fmt.Sprintf(`after "script" { command = "echo after $(cat VERSION) >> %s" }`, e.log)
	r := e.runner(e.config(keysConfig(e, []signer{old, next}) + "\n" + hook))
	e.publish("v1")
	old.sign(e, nil)
	e.check(r, agent.ResultInstalled)
	v1 := e.state_(r).Checksum
	e.publish("v2")
	next.sign(e, nil)
	e.check(r, agent.ResultInstalled)
	v2 := e.state_(r).Release

	ff := &fakeFleet{}
	ff.st.Pins = []fleet.Pin{{Nodes: "test-*", Target: v1, Who: "ops"}}
	rr := keysRolloutRunner(t, e, ff, keysConfig(e, []signer{old, next})+"\n"+hook)
	type crashed struct{}
	rr.SetCrashHook(func(point string) {
		if point == "switched:pin" {
			panic(crashed{})
		}
	})
	func() {
		defer func() {
			if _, ok := recover().(crashed); !ok {
				t.Fatal("the switch to the pinned release was not interrupted")
			}
		}()
		rr.Check(t.Context())
	}()
	if e.current() != "v1" || e.state_(rr).SwitchBack == nil {
		t.Fatalf("interrupted: on %q, intent %+v", e.current(), e.state_(rr).SwitchBack)
	}
	before := e.hookLog()

	rr = keysRolloutRunner(t, e, ff, keysConfig(e, []signer{next}, old)+"\n"+hook)
	out := rr.Check(t.Context())
	st := e.state_(rr)
	if e.current() != "v2" || st.Release != v2 || st.SwitchBack != nil {
		t.Fatalf("after the restart (%s %s %v): on %q, the state says %s, intent %+v", out.Result, out.Reason, out.Err, e.current(), st.Release, st.SwitchBack)
	}
	if got := strings.TrimPrefix(e.hookLog(), before); !strings.Contains(got, "after v2") {
		t.Fatalf("put back on v2 without its after hooks: %q", got)
	}
	if !strings.Contains(out.Reason, "revoked") {
		t.Fatalf("then the pin: %s %q", out.Result, out.Reason)
	}
}
