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
		if asksAtOnce(s.Node, "sum1", prev, Askers) {
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
		if c := fmt.Sprintf("sum%d", i+1); !asksAtOnce(node, c, prev, Askers) {
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
	sum := ""
	for i := range 100000 {
		if c := fmt.Sprintf("sum%d", i+1); !asksAtOnce(s.Node, c, prev, 4*Askers) {
			sum = c
			break
		}
	}
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
		if !asksAtOnce(fmt.Sprintf("host-%02d", i), "sum1", small, Askers) {
			t.Errorf("host-%02d of a fleet of %d does not ask at once", i, Askers)
		}
		if !asksAtOnce(fmt.Sprintf("host-%02d", i), "sum1", nil, Askers) {
			t.Errorf("host-%02d with no document before does not ask at once", i)
		}
	}
	const hosts = 5000
	large := &lock.Rollout{Waves: []lock.WaveState{{Hosts: 1}, {Hosts: 499}, {Hosts: hosts - 500}}}
	total := 0
	for _, sum := range []string{"sum1", "sum2", "sum3", "sum4"} {
		n := 0
		for i := range hosts {
			if asksAtOnce(fmt.Sprintf("host-%05d", i), sum, large, Askers) {
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
