package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
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

// switchedOverlap is the most updates to v that switched (their after
// hook ran in v) running at once, from the shared timeline: an update
// abandoned before its switch (its slot lost) restarts the current
// release and is left out.
func switchedOverlap(f *fleetRig, v string) (int, string) {
	b, _ := os.ReadFile(f.shared)
	open := map[string]float64{}
	var us []update
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 3 {
			continue
		}
		ts, _ := strconv.ParseFloat(fields[0], 64)
		switch fields[1] {
		case "start":
			open[fields[2]] = ts
		case "end":
			if s, ok := open[fields[2]]; ok && fields[len(fields)-1] == v {
				us = append(us, update{fields[2], s, ts})
			}
			delete(open, fields[2])
		}
	}
	return maxOverlap(us), string(b)
}

// An agent paused (SIGSTOP, a frozen VM) in the middle of its update,
// past its session's TTL, loses its grant to another host: resumed, it
// must not switch before its renewal notices. Never more than
// concurrency hosts switch at once, and the paused host installs the
// release later, in a slot of its own.
func TestHostPausedPastItsTTLDoesNotSwitch(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 6, 2, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	_, before := f.timeline()
	sum := f.publish("v2", false)
	// The first host to start v2, caught inside its before hook.
	var victim *host
	deadline := time.Now().Add(60 * time.Second)
	for victim == nil {
		if time.Now().After(deadline) {
			t.Fatal("no host started v2")
		}
		_, starts := f.timeline()
		if nodes := starts[sum]; len(nodes) > len(before[sum]) {
			for _, h := range f.hosts {
				if h.name == nodes[0] {
					victim = h
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	victim.cmd.Process.Signal(syscall.SIGSTOP)
	paused := time.Now()
	// The hosts granted meanwhile stay in their before hooks a while.
	slow := filepath.Join(f.dir, "slow")
	os.WriteFile(slow, nil, 0o644)
	cl, _ := api.NewClient(&api.Config{Address: c.Addr})
	testutil.Eventually(t, 60*time.Second, func() error {
		if kv, _, err := cl.KV().Get(lockconsul.GrantKey(f.prefix, "app", victim.name), nil); err != nil || kv != nil {
			return fmt.Errorf("%s's grant still there (%v)", victim.name, err)
		}
		_, starts := f.timeline()
		if n := len(starts[sum]); n < 3 {
			return fmt.Errorf("%d hosts started v2", n)
		}
		return nil
	})
	t.Logf("%s paused for %.1fs, its grant gone, two others granted", victim.name, time.Since(paused).Seconds())
	victim.cmd.Process.Signal(syscall.SIGCONT)
	time.Sleep(2 * time.Second) // the paused host's next step, if it takes one
	os.Remove(slow)
	f.waitAll(f.hosts, "v2", 120*time.Second)
	if got, tl := switchedOverlap(f, "v2"); got > 2 {
		t.Errorf("concurrency 2, but %d hosts switched at once:\n%s", got, tl)
	}
}

// The agent that coordinates a rollout is paused (SIGSTOP) in the middle
// of a wave past its session's TTL, while another takes over, then
// resumed: two agents believe for a moment that they coordinate. Never
// more than concurrency hosts hold a grant or update at once, and the
// rollout finishes on every host, the paused one included.
func TestCoordinatorPausedPastItsTTL(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 2, c, `
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
	var victim *host
	testutil.Eventually(t, 60*time.Second, func() error {
		if len(f.waves(sum)["1"]) == 0 {
			return errors.New("wave 1 of v2 has not started")
		}
		node := coordinatorOf(t, c.Addr, f.prefix)
		for _, h := range f.hosts {
			if h.name == node {
				victim = h
			}
		}
		if victim == nil {
			return errors.New("no coordinator")
		}
		return nil
	})
	victim.cmd.Process.Signal(syscall.SIGSTOP)
	paused := time.Now()
	// Consul ends the paused agent's session within twice its TTL (20 s);
	// a host in line then looks for a coordinator within its check (a
	// few seconds, its follower of the document paused at rest or not),
	// not at its backstop a minute after it got in line.
	testutil.Eventually(t, 45*time.Second, func() error {
		if node := coordinatorOf(t, c.Addr, f.prefix); node == "" || node == victim.name {
			return fmt.Errorf("coordinator: %q", node)
		}
		return nil
	})
	t.Logf("%s (the coordinator) paused; another took over %.1fs later", victim.name, time.Since(paused).Seconds())
	victim.cmd.Process.Signal(syscall.SIGCONT)
	f.waitAll(f.hosts, "v2", 120*time.Second)
	close(stop)
	if m := <-most; m > 2 {
		t.Errorf("Consul held %d grants at once; concurrency is 2", m)
	}
	if got, tl := switchedOverlap(f, "v2"); got > 2 {
		t.Errorf("concurrency 2, but %d hosts switched at once:\n%s", got, tl)
	}
}

// A freeze written in the middle of a wave: the hosts updating finish,
// and no other host starts, whatever grant the coordinator made before
// its next read of the records (each granted host reads the freeze once
// its grant comes).
func TestRolloutFreezeMidWaveStopsNewStarts(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 8, 2, c, `
  rollout {
    waves = ["100%"]
  }`)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 90*time.Second)
	slow := filepath.Join(f.dir, "slow")
	os.WriteFile(slow, nil, 0o644) // each update takes 30 s
	_, before := f.timeline()
	sum := f.publish("v2", false)
	testutil.Eventually(t, 60*time.Second, func() error {
		if _, starts := f.timeline(); len(starts[sum]) == len(before[sum]) {
			return errors.New("no host started v2")
		}
		return nil
	})
	if out, errOut, code := run(t, "fleet", "freeze", "app", "--reason", "mid-wave", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("freeze: %s %s", out, errOut)
	}
	frozen := float64(time.Now().UnixNano()) / 1e9
	os.Remove(slow)
	// The updates under way end within their 30 s; then 10 s more.
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		_, starts := f.timeline()
		if len(starts[sum]) > 2 {
			b, _ := os.ReadFile(f.shared)
			t.Fatalf("a host started v2 after the freeze (at %.3f):\n%s", frozen, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, errOut, code := run(t, "fleet", "unfreeze", "app", "-c", f.hosts[0].cfg); code != 0 {
		t.Fatalf("unfreeze: %s %s", out, errOut)
	}
	f.waitAll(f.hosts, "v2", 90*time.Second)
}
