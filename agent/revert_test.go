package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// fakeFleet is a fleet in memory, for what a rollout reads and writes; a
// test steers it from onAcquire, run while a host waits for its slot.
type fakeFleet struct {
	fleet.Fleet // what a test does not expect to be called panics
	mu          sync.Mutex
	st          fleet.Status
	onAcquire   func(st *fleet.Status)
	lost        chan struct{} // what Acquire returns, when set: a slot lost
}

func (f *fakeFleet) Status(context.Context, string) (fleet.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Nodes = append([]fleet.NodeStatus(nil), f.st.Nodes...)
	st.Breakers = append([]fleet.Breaker(nil), f.st.Breakers...)
	return st, nil
}

func (f *fakeFleet) Report(_ context.Context, _ string, ns fleet.NodeStatus) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.st.Nodes {
		if f.st.Nodes[i].Node == ns.Node {
			f.st.Nodes[i] = ns
			return nil
		}
	}
	f.st.Nodes = append(f.st.Nodes, ns)
	return nil
}

func (f *fakeFleet) Record(context.Context, string, fleet.Event) error { return nil }

// Blocked: never, but by a breaker of the checksum.
func (f *fakeFleet) Blocked(_ context.Context, _, checksum string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.st.Breakers {
		if b.Checksum == checksum {
			return "failed on " + b.Node, nil
		}
	}
	return "", nil
}

func (f *fakeFleet) FixPlan(_ context.Context, _, checksum string, waves []fleet.PlanWave) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.st.Plans[checksum]; ok {
		return false, nil
	}
	if f.st.Plans == nil {
		f.st.Plans = map[string][]fleet.PlanWave{}
	}
	f.st.Plans[checksum] = waves
	return true, nil
}

func (f *fakeFleet) Semaphore(string, int) (fleet.Semaphore, error) { return fakeSem{f}, nil }

type fakeSem struct{ f *fakeFleet }

func (s fakeSem) Acquire(context.Context) (<-chan struct{}, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.onAcquire != nil {
		s.f.onAcquire(&s.f.st)
	}
	if s.f.lost != nil {
		return s.f.lost, nil
	}
	return make(chan struct{}), nil
}

func (s fakeSem) Release(context.Context) error { return nil }

// rolloutRunner installs v1 then v2 without a rollout, and returns a
// runner of the same host whose service reverts on failure, in ff, with
// the blocks of extra in its service.
func rolloutRunner(t *testing.T, e *env, ff *fakeFleet, extra ...string) (*agent.Runner, string) {
	t.Helper()
	r, _, v2 := rolloutRunnerIn(t, e, "", func(string, hcl.Body, fleet.Env) (fleet.Agent, hcl.Diagnostics) { return ff, nil }, extra...)
	return r, v2
}

// rolloutRunnerIn is rolloutRunner with the fleet that factory makes of
// the lock "consul" block whose body is lockBody; it returns that fleet.
func rolloutRunnerIn(t *testing.T, e *env, lockBody string, factory fleet.Factory, extra ...string) (*agent.Runner, fleet.Agent, string) {
	t.Helper()
	plain := e.runner(e.config(""))
	e.publish("v1")
	e.check(plain, agent.ResultInstalled)
	e.publish("v2")
	v2 := e.check(plain, agent.ResultInstalled).Checksum
	reg := registry()
	reg.Fleets = map[string]fleet.Factory{"consul": factory}
	src := fmt.Sprintf(`
state_path = %q
node_name  = "test-node"
lock "consul" {
%s
}
service "app" {
  check_interval = "1s"
  sequential     = true
  artifact "file" {
    path        = %q
    destination = %q
  }
  rollout {
    waves      = ["100%%"]
    on_failure = "revert"
  }
%s
}
`, e.state, lockBody, e.store, e.dest, strings.Join(extra, "\n"))
	path := filepath.Join(e.dir, "rollout.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, diags := agent.Load(path, reg, slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		t.Fatalf("config: %v", diags)
	}
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return r, cfg.Fleet, v2
}

// A revert waits for a slot; what the fleet decided meanwhile counts: a
// breaker lifted (`fleet clear`) or a hold set while the host waited
// means no revert.
func TestRevertLooksAgainOnceItHoldsTheSlot(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(st *fleet.Status)
		reason string
	}{
		{"cleared", func(st *fleet.Status) { st.Breakers = nil }, "lifted"},
		{"held", func(st *fleet.Status) { st.Hold = &fleet.Hold{Who: "ops", Reason: "incident"} }, "on hold by ops"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			ff := &fakeFleet{}
			r, v2 := rolloutRunner(t, e, ff)
			ff.st.Breakers = []fleet.Breaker{{Checksum: v2, Node: "other", Phase: "gate"}}
			ff.onAcquire = c.change
			out := e.check(r, agent.ResultSkipped)
			if e.current() != "v2" {
				t.Fatalf("reverted to %s although the fleet %s it while the host waited for its slot", e.current(), c.name)
			}
			if !strings.Contains(out.Reason, c.reason) {
				t.Fatalf("reason %q, want %q", out.Reason, c.reason)
			}
		})
	}
	// Without a change the revert goes on: the test sees what it means to.
	e := newEnv(t)
	ff := &fakeFleet{}
	r, v2 := rolloutRunner(t, e, ff)
	ff.st.Breakers = []fleet.Breaker{{Checksum: v2, Node: "other", Phase: "gate"}}
	e.check(r, agent.ResultReverted)
	if e.current() != "v1" {
		t.Fatalf("reverted to %q, want v1", e.current())
	}
}

// A pin lifted while the host waited for its slot: no switch to it.
func TestPinLiftedWhileWaitingForTheSlot(t *testing.T) {
	e := newEnv(t)
	ff := &fakeFleet{}
	r, _ := rolloutRunner(t, e, ff)
	v1 := e.state_(r).Releases[0].Checksum
	ff.st.Pins = []fleet.Pin{{Nodes: "test-*", Target: v1, Who: "ops"}}
	ff.onAcquire = func(st *fleet.Status) { st.Pins = nil }
	e.check(r, agent.ResultSkipped)
	if e.current() != "v2" {
		t.Fatalf("switched to %s, pinned by a pin lifted meanwhile", e.current())
	}
	ff.onAcquire = nil
	ff.st.Pins = []fleet.Pin{{Nodes: "test-*", Target: v1, Who: "ops"}}
	e.check(r, agent.ResultRolledBack)
	if e.current() != "v1" {
		t.Fatalf("pinned to v1, on %s", e.current())
	}
}

// A fleet revert never runs a run-once hook; the next install does.
func TestRevertNeverRunsARunOnceHook(t *testing.T) {
	e := newEnv(t)
	ff := &fakeFleet{}
	ran := filepath.Join(e.dir, "once.log")
	r, v2 := rolloutRunner(t, e, ff, fmt.Sprintf(`  after "script" {
    once    = "fleet"
    command = "cat VERSION >> %s"
  }`, ran))
	ff.st.Breakers = []fleet.Breaker{{Checksum: v2, Node: "other", Phase: "gate"}}
	e.check(r, agent.ResultReverted)
	if e.current() != "v1" {
		t.Fatalf("reverted to %q, want v1", e.current())
	}
	if b, _ := os.ReadFile(ran); len(b) != 0 {
		t.Fatalf("the revert ran the run-once hook: %q", b)
	}
	// The install of v3 waits for the fleet's hosts to register first.
	e.publish("v3")
	testutil.Eventually(t, 30*time.Second, func() error {
		if out := r.Check(context.Background()); out.Result != agent.ResultInstalled {
			return fmt.Errorf("v3: %s (%s %v)", out.Result, out.Reason, out.Err)
		}
		return nil
	})
	if b, _ := os.ReadFile(ran); string(b) != "v3" {
		t.Fatalf("the install of v3 ran the run-once hook as %q, want once, in v3", b)
	}
}
