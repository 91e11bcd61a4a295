package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
)

// prevDoc writes the document of a release rolled out before to hosts
// hosts, done, as the coordinator leaves it.
func prevDoc(t *testing.T, s *Slots, hosts int) *lock.Rollout {
	t.Helper()
	doc := &lock.Rollout{Checksum: "sum0", Done: true, By: "host-00", Time: time.Now().UTC(),
		Waves: []lock.WaveState{{Name: "canary", Hosts: 1, Done: 1}, {Name: "rest", Hosts: hosts - 1, Done: hosts - 1}}}
	b, _ := json.Marshal(doc)
	if _, err := s.Client.KV().Put(&api.KVPair{Key: RolloutKey(s.Prefix, s.Service), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	return doc
}

// countAsks counts the writes to the release key of hs's service.
func countAsks(t *testing.T, hs []*Slots) *atomic.Int64 {
	path := "/v1/kv/" + ReleaseKey(hs[0].Prefix, hs[0].Service)
	return countRequests(t, hs, func(r *http.Request) bool { return r.Method == http.MethodPut && r.URL.Path == path })
}

// Of a fleet that finds a release at once, a few hosts ask for it (a
// check-and-set each, all but one lost), not every host: the fleet's
// size comes from the document of the release before. The release is
// asked for, and a coordinator elected, all the same.
func TestRolloutFewHostsAskForARelease(t *testing.T) {
	const n = 40
	hs := hosts(t, n, 1)
	// The fleet was 200 hosts the release before, 40 of which find
	// this one.
	prev := prevDoc(t, hs[0], 200)
	picked := 0
	for _, s := range hs {
		s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
		if asksAtOnce(s.Node, "sum1", prev) {
			picked++
		}
	}
	if picked == 0 || picked == n {
		t.Fatalf("%d of %d hosts picked to ask at once: the test needs some, not all", picked, n)
	}
	asks := countAsks(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Every host reads the rollout's keys before any asks, as a fleet
	// woken at once by the release's announcement does.
	for _, s := range hs {
		s.Looked(lookOps(t, s.Client, s))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, s := range hs {
		wg.Go(func() {
			if _, _, err := s.Rollout(ctx, "sum1"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := asks.Load(); got != int64(picked) {
		t.Fatalf("%d writes to the release key by %d hosts that found it at once; want %d (the hosts picked)", got, n, picked)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		kv, _, err := hs[0].Client.KV().Get(ReleaseKey(hs[0].Prefix, "app"), nil)
		if err != nil {
			return err
		}
		var rel Placement
		if kv == nil || json.Unmarshal(kv.Value, &rel) != nil || rel.Checksum != "sum1" {
			return fmt.Errorf("the release key says %v", kv)
		}
		for _, s := range hs {
			if s.Coordinating() {
				return nil
			}
		}
		return errors.New("no coordinator elected")
	})
}

// notPicked returns a release (not the document's) that node is not
// picked to ask for at once, of a fleet as prev says.
func notPicked(t *testing.T, node string, prev *lock.Rollout) string {
	t.Helper()
	for i := range 100000 {
		if c := fmt.Sprintf("sum%d", i+1); !asksAtOnce(node, c, prev) {
			return c
		}
	}
	t.Fatalf("no release that %s is not picked to ask for", node)
	return ""
}

// A host not picked leaves the ask to the pick at its first look, and at
// a later look that still finds the release not asked for, AskDefer
// after the first, asks for it itself; not at a look sooner than that.
func TestRolloutLaterLookAsks(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	prev := prevDoc(t, s, 5000)
	sum := notPicked(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	asks := countAsks(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		if _, _, err := s.Rollout(ctx, sum); err != nil {
			t.Fatal(err)
		}
	}
	if got := asks.Load(); got != 0 {
		t.Fatalf("%d asks by a host not picked, at looks within AskDefer; want none", got)
	}
	s.mu.Lock()
	s.deferredAt = s.deferredAt.Add(-AskDefer)
	s.mu.Unlock()
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	if got := asks.Load(); got != 1 {
		t.Fatalf("%d asks at a look AskDefer after the first; want 1", got)
	}
	kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, "app"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var rel Placement
	if kv == nil || json.Unmarshal(kv.Value, &rel) != nil || rel.Checksum != sum {
		t.Fatalf("the release key says %v", kv)
	}
}

// With none of the pick present (the fleet shrank since the document
// of the release before), the host that found the release gets in line
// for it, a coordinator is elected, moves it out of line (nobody asked
// for the release), and the host's next look asks: it is granted.
func TestRolloutWithNoPickedHostStillRollsOut(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	prev := prevDoc(t, s, 5000)
	sum := notPicked(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	asks := countAsks(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	moved := 0
	for {
		// As the agent's checks: look, then wait in line.
		if _, _, err := s.Rollout(ctx, sum); err != nil {
			t.Fatal(err)
		}
		s.Want(sum)
		_, err := s.Acquire(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, lock.ErrMoved) {
			t.Fatalf("after %d moves out of line: %v (release key asked %d times)", moved, err, asks.Load())
		}
		moved++
	}
	defer s.Release(ctx)
	if got := asks.Load(); got != 1 {
		t.Errorf("%d asks; want 1, at the look after the host was moved out of line", got)
	}
	if moved == 0 {
		t.Errorf("granted without being moved out of line: the release was asked for at once")
	}
}

// A host told to ask at once (`agent --once`, which has no later) asks
// for a release it finds not asked for, picked or not.
func TestRolloutAskAtOnceAsksUnpicked(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	prev := prevDoc(t, s, 5000)
	sum := notPicked(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	s.AskAtOnce()
	asks := countAsks(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	if got := asks.Load(); got != 1 {
		t.Fatalf("%d writes to the release key by a host told to ask at once; want 1", got)
	}
}

// Each host of a fleet of Askers or fewer asks at once, and of a large
// fleet about Askers do.
func TestAsksAtOnce(t *testing.T) {
	small := &lock.Rollout{Waves: []lock.WaveState{{Hosts: 1}, {Hosts: Askers - 1}}}
	for i := range Askers {
		if !asksAtOnce(fmt.Sprintf("host-%02d", i), "sum1", small) {
			t.Errorf("host-%02d of a fleet of %d does not ask at once", i, Askers)
		}
		if !asksAtOnce(fmt.Sprintf("host-%02d", i), "sum1", nil) {
			t.Errorf("host-%02d with no document before does not ask at once", i)
		}
	}
	const hosts = 5000
	large := &lock.Rollout{Waves: []lock.WaveState{{Hosts: 1}, {Hosts: 499}, {Hosts: hosts - 500}}}
	total := 0
	for _, sum := range []string{"sum1", "sum2", "sum3", "sum4"} {
		n := 0
		for i := range hosts {
			if asksAtOnce(fmt.Sprintf("host-%05d", i), sum, large) {
				n++
			}
		}
		if n > 4*Askers {
			t.Errorf("%d of %d hosts ask at once for %s; want about %d", n, hosts, sum, Askers)
		}
		total += n
	}
	if total == 0 {
		t.Errorf("no host of %d asks at once for any of 4 releases", hosts)
	}
}

// donePlanner plans every release done, as the coordinator of a release
// rolled out before sees it: decide then looks again only once a minute.
type donePlanner struct{}

func (donePlanner) Plan(_ context.Context, sum string) (lock.Rollout, map[string]string, error) {
	return lock.Rollout{Checksum: sum, Done: true, Waves: []lock.WaveState{{Name: "a", Hosts: 5000, Done: 5000}}},
		map[string]string{"host-00": "a", "host-01": "a"}, nil
}

// A coordinator alive with a plan of the release before (c.plan != nil,
// its rollout done), and a host not picked in line for a new release
// nobody asked for: it is moved out of line after askGrace, so that its
// next look asks, not at the coordinator's next decision (a minute).
func TestRolloutMovedOutOfLineWithAPlanOfTheReleaseBefore(t *testing.T) {
	hs := hosts(t, 2, 2)
	co, s := hs[0], hs[1]
	prev := prevDoc(t, co, 5000)
	sum := notPicked(t, s.Node, prev)
	for _, h := range hs {
		h.SetPlanner(donePlanner{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if ok, err := co.ask(ctx, "sum0", 0); err != nil || !ok {
		t.Fatalf("ask sum0: %v %v", ok, err)
	}
	// host-00 holds a slot outside any rollout: the coordinator stays.
	began := time.Now()
	co.Want("")
	if _, err := co.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	defer co.Release(ctx)
	// Its decision of sum0 made (c.plan != nil).
	testutil.Eventually(t, 10*time.Second, func() error {
		kv, _, err := co.Client.KV().Get(RolloutKey(co.Prefix, co.Service), nil)
		var d lock.Rollout
		if err == nil && kv != nil && json.Unmarshal(kv.Value, &d) == nil && d.By == co.Node && d.Time.After(began) {
			return nil
		}
		return errors.New("no plan of sum0")
	})
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	s.Want(sum)
	start := time.Now()
	actx, acancel := context.WithTimeout(ctx, 20*time.Second)
	defer acancel()
	_, err := s.Acquire(actx)
	if !errors.Is(err, lock.ErrMoved) {
		t.Fatalf("in line for %s, nobody asked for it, a coordinator with a plan of sum0: not moved out after %v (err %v)", sum, time.Since(start).Round(time.Second), err)
	}
}

// slowFirstPlanner takes first to decide its first release, as a first
// decision reading thousands of records on a busy Consul does.
type slowFirstPlanner struct {
	first time.Duration
	calls atomic.Int64
}

func (p *slowFirstPlanner) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	if p.calls.Add(1) == 1 {
		select {
		case <-time.After(p.first):
		case <-ctx.Done():
		}
	}
	return donePlanner{}.Plan(ctx, sum)
}

// A coordinator elected with the release before asked for (sum0), its
// first decision slow, and a new release asked for meanwhile: a host in
// line for the release asked for is not moved out of line (it would
// only look again and get back in line: at scale, the whole fleet).
func TestRolloutAskedReleaseNotMovedOutDuringAFirstDecision(t *testing.T) {
	hs := hosts(t, 2, 2)
	co, s := hs[0], hs[1]
	prevDoc(t, co, 5000)
	for _, h := range hs {
		h.SetPlanner(&slowFirstPlanner{first: 8 * time.Second})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if ok, err := co.ask(ctx, "sum0", 0); err != nil || !ok {
		t.Fatalf("ask sum0: %v %v", ok, err)
	}
	co.Want("")
	if _, err := co.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	defer co.Release(ctx)
	// Its decision reads sum0 asked for, and decides (slowly).
	testutil.Eventually(t, 10*time.Second, func() error {
		co.mu.Lock()
		c := co.coord
		co.mu.Unlock()
		if c == nil {
			return errors.New("host-00 does not coordinate")
		}
		if a, _ := c.asked.Load().(string); a != "sum0" {
			return fmt.Errorf("the coordinator has %q asked for", a)
		}
		return nil
	})
	kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, s.Service), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.ask(ctx, "sum9", kv.ModifyIndex); err != nil || !ok {
		t.Fatalf("ask sum9: %v %v", ok, err)
	}
	moves := 0
	start := time.Now()
	for time.Since(start) < 6*time.Second {
		if _, _, err := s.Rollout(ctx, "sum9"); err != nil {
			t.Fatal(err)
		}
		s.Want("sum9")
		actx, acancel := context.WithTimeout(ctx, 6*time.Second-time.Since(start))
		_, err := s.Acquire(actx)
		acancel()
		if errors.Is(err, lock.ErrMoved) {
			moves++
			continue
		}
		break
	}
	if moves > 0 {
		t.Errorf("in line for sum9, asked for, during the coordinator's first decision: moved out %d times in 6 s", moves)
	}
}

// A host not picked that left the ask for sum1 to the pick, and whose
// store still shows sum1 when a newer release was asked for since its
// first look, does not ask sum1 over it at its later look: its wait
// starts again.
func TestRolloutLaterLookDoesNotAskOverANewerRelease(t *testing.T) {
	hs := hosts(t, 2, 2)
	s, other := hs[0], hs[1]
	prev := prevDoc(t, s, 5000)
	sum := notPicked(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	// The newer release, asked for by a host of its pick.
	if ok, err := other.ask(ctx, "newer", 0); err != nil || !ok {
		t.Fatalf("ask newer: %v %v", ok, err)
	}
	s.mu.Lock()
	s.deferredAt = s.deferredAt.Add(-AskDefer)
	s.mu.Unlock()
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, s.Service), nil)
	if err != nil {
		t.Fatal(err)
	}
	var rel Placement
	json.Unmarshal(kv.Value, &rel)
	if rel.Checksum != "newer" {
		t.Fatalf("the release key says %q: %s asked over the release asked for since its first look", rel.Checksum, sum)
	}
}
