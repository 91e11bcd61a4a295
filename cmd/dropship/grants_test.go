package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// liveGrants samples, until stop closes, the grants Consul holds for app
// under prefix (keys with a live session in the granted state), and sends
// the most seen at once.
func liveGrants(t *testing.T, addr, prefix string, stop <-chan struct{}) <-chan int {
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan int, 1)
	go func() {
		most := 0
		for {
			select {
			case <-stop:
				out <- most
				return
			default:
			}
			pairs, _, err := c.KV().List(lockconsul.GrantPrefix(prefix, "app"), &api.QueryOptions{RequireConsistent: true})
			if err == nil {
				n := 0
				for _, kv := range pairs {
					var g lockconsul.Grant
					if kv.Session != "" && json.Unmarshal(kv.Value, &g) == nil && g.State == lockconsul.StateGranted {
						n++
					}
				}
				most = max(most, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return out
}

// coordinatorOf reads which host coordinates app's slots now ("" if none).
func coordinatorOf(t *testing.T, addr, prefix string) string {
	c, _ := api.NewClient(&api.Config{Address: addr})
	kv, _, err := c.KV().Get(lockconsul.CoordKey(prefix, "app"), nil)
	if err != nil || kv == nil || kv.Session == "" {
		return ""
	}
	var d lockconsul.Doc
	json.Unmarshal(kv.Value, &d)
	return d.Node
}

// kill -9 of the agent that coordinates, in the middle of a rollout:
// another agent takes over (once the dead one's session expires), never
// more than concurrency hosts hold a grant at once, and every other host
// installs the release.
func TestCoordinatorKilledMidRollout(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	f := newFleet(t, 6, 2, c)
	f.publish("v1", false)
	f.startAll()
	f.waitAll(f.hosts, "v1", 60*time.Second)
	stop := make(chan struct{})
	most := liveGrants(t, c.Addr, f.prefix, stop)
	_, before := f.timeline()
	f.publish("v2", false)
	// As soon as a host starts v2 there is a coordinator, and hosts wait.
	var victim *host
	deadline := time.Now().Add(30 * time.Second)
	for victim == nil {
		_, starts := f.timeline()
		started := false
		for sum, nodes := range starts {
			started = started || len(before[sum]) == 0 && len(nodes) > 0
		}
		if node := coordinatorOf(t, c.Addr, f.prefix); started && node != "" {
			for _, h := range f.hosts {
				if h.name == node {
					victim = h
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no host started v2 under a coordinator")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.killCoordinator(t, c, victim, stop, most, 2)
}

// killCoordinator kill -9s victim, the coordinator, and checks that the
// other hosts install v2 under another one, never more than limit of them
// granted (most, from liveGrants, once stop is closed) or updating at once.
func (f *fleetRig) killCoordinator(t *testing.T, c *rig.Consul, victim *host, stop chan struct{}, most <-chan int, limit int) {
	t.Helper()
	killed := time.Now()
	victim.cmd.Process.Signal(syscall.SIGKILL)
	victim.cmd.Wait()
	var others []*host
	for _, h := range f.hosts {
		if h != victim {
			others = append(others, h)
		}
	}
	// Consul expires the dead session within twice its TTL (10 s); a
	// waiting host looks for a coordinator every 10 s.
	f.waitAll(others, "v2", 90*time.Second)
	t.Logf("%s (the coordinator) killed; the other hosts finished %.1fs later", victim.name, time.Since(killed).Seconds())
	close(stop)
	if m := <-most; m > limit {
		t.Errorf("Consul held %d grants at once; concurrency is %d", m, limit)
	}
	if node := coordinatorOf(t, c.Addr, f.prefix); node == victim.name {
		t.Errorf("the killed host still coordinates")
	}
	us, _ := f.timeline()
	var done []update
	for _, u := range us {
		if u.node != victim.name {
			done = append(done, u)
		}
	}
	if got := maxOverlap(done); got > limit {
		t.Errorf("concurrency %d, but %d updates overlapped", limit, got)
	}
}

// previousRelease is the dropship before the grants: its agents take
// consul/api's semaphore under <service>/lock/.
const previousRelease = "96b1bc3"

// buildPrevious builds the agent of previousRelease from this repository's
// history.
func buildPrevious(t *testing.T) string {
	t.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("the previous release is built from this repository's history: %v", err)
	}
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	archive := exec.Command("sh", "-c", "git -C \"$1\" archive \"$2\" | tar -x -C \"$3\"", "sh", strings.TrimSpace(string(root)), previousRelease, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", previousRelease, err, out)
	}
	out := filepath.Join(t.TempDir(), "dropship-previous")
	build := exec.Command("go", "build", "-o", out, "./cmd/dropship")
	build.Dir = src
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", previousRelease, err, b)
	}
	return out
}

// Upgrading dropship through a fleet: agents of the previous release (the
// consul/api semaphore) and of this one (grants) serve one service at
// once, and together never update more than concurrency hosts at once.
func TestPreviousReleaseAndGrantsShareTheLimit(t *testing.T) {
	t.Parallel()
	c := consulServer(t)
	old := buildPrevious(t)
	f := newFleet(t, 4, 1, c)
	f.publish("v1", false)
	for i, h := range f.hosts {
		if i < 2 {
			f.startWith(h, old)
		} else {
			f.start(h)
		}
	}
	f.waitAll(f.hosts, "v1", 90*time.Second)
	f.waitEnds("v1", 4)
	f.publish("v2", false)
	f.waitAll(f.hosts, "v2", 90*time.Second)
	f.waitEnds("v2", 4)
	us, _ := f.timeline()
	if len(us) != 8 {
		t.Fatalf("%d updates on the timeline, want 8", len(us))
	}
	if got := maxOverlap(us); got > 1 {
		t.Errorf("concurrency 1, but %d updates of older and newer agents overlapped", got)
	}
}

// startWith starts h's agent from the binary at path.
func (f *fleetRig) startWith(h *host, path string) {
	log, _ := os.Create(filepath.Join(f.dir, h.name+".log"))
	h.cmd = exec.Command(path, "agent", "-c", h.cfg, "--log-level", "debug")
	h.cmd.Stderr, h.cmd.Stdout = log, log
	if err := h.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
}
