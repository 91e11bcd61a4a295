package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A host that registers in the middle of a rollout goes into the last
// wave of the plan fixed when it started, and waits for that wave's
// approval like the others: it is never taken for the canary, nor let
// past an approval.
func TestRolloutHostJoiningMidRolloutGoesLast(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 6, 2, c, `
  rollout {
    canary  = 1
    waves   = ["50%", "100%"]
    approve = ["2"]
  }`)
	sum := f.publish("v1", false)
	late := f.hosts[5]
	first := f.hosts[:5]
	for _, h := range first {
		f.start(h)
	}
	// The canary and wave 1 (3 of 5 hosts) install; wave 2 waits for
	// its approval.
	testutil.Eventually(t, 60*time.Second, func() error {
		var on, waiting int
		for _, h := range first {
			switch {
			case h.version() == "v1":
				on++
			case hasLine(f.logSince(h, nil), []string{"rollout wave 2: waiting for approval of wave 2: dropship fleet approve app --wave 2"}):
				waiting++
			}
		}
		if on != 3 || waiting != 2 {
			return fmt.Errorf("%d hosts on v1 (want 3), %d waiting for the approval of wave 2 (want 2)", on, waiting)
		}
		return nil
	})
	marks := f.marks()
	f.start(late)
	f.waitLog([]*host{late}, marks, "rollout wave 2: waiting for approval of wave 2")
	if v := late.version(); v != "" {
		t.Fatalf("the host that joined mid-rollout installed %q before wave 2 was approved", v)
	}
	if got := f.startedOnce(t, sum); slices.Contains(got, late.name) {
		t.Fatalf("the host that joined started %s before the approval: %v", sum, got)
	}
	if out, errOut, code := run(t, "fleet", "approve", "app", "--wave", "2", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("approve: %d %s %s", code, out, errOut)
	}
	f.waitAll(f.hosts, "v1", 60*time.Second)
	waves := f.waves(sum)
	if !slices.Contains(waves["2"], late.name) {
		t.Fatalf("the host that joined mid-rollout started in a wave other than the last: %v", waves)
	}
	if len(waves["canary"]) != 1 || slices.Contains(waves["canary"], late.name) {
		t.Fatalf("canary wave: %v", waves["canary"])
	}
}

// kill -9 of the agent that coordinates a rollout, in the middle of a
// wave: another agent takes over (the dead one's session expires), never
// more than concurrency hosts hold a grant at once, and the rollout
// finishes on every other host.
func TestCoordinatorKilledMidWave(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 10, 2, c, `
  rollout {
    canary = 1
    waves  = ["100%"]
  }`)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	stop := make(chan struct{})
	most := liveGrants(t, c.Addr, f.prefix, stop)
	sum := f.publish("v2", false)
	// Wave 1 under way: a host other than the canary started v2.
	var victim *host
	testutil.Eventually(t, 60*time.Second, func() error {
		w := f.waves(sum)
		if len(w["1"]) == 0 {
			return errors.New("wave 1 of v2 has not started")
		}
		node := coordinatorOf(t, c.Addr, f.prefix)
		on := 0
		for _, h := range f.hosts {
			if h.name == node {
				victim = h
			}
			if h.version() == "v2" {
				on++
			}
		}
		switch {
		case on == len(f.hosts):
			t.Fatal("the wave ended before the coordinator could be killed")
		case victim == nil:
			return errors.New("no coordinator")
		}
		return nil
	})
	f.killCoordinator(t, c, victim, stop, most, 2)
	if !strings.Contains(strings.Join(f.waves(sum)["1"], ","), "host") {
		t.Errorf("no host started wave 1")
	}
}
