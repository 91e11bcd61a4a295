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
	t.Helper()
	n := new(atomic.Int64)
	path := "/v1/kv/" + ReleaseKey(hs[0].Prefix, hs[0].Service)
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPut && r.URL.Path == path {
			n.Add(1)
		}
		return http.DefaultTransport.RoundTrip(r)
	})}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range hs {
		s.Client = c
	}
	return n
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
		ok, resp, _, err := s.Client.Txn().Txn(s.LookOps(), nil)
		if err != nil || !ok {
			t.Fatalf("read the rollout's keys: %v %v", err, resp)
		}
		var pairs api.KVPairs
		for _, r := range resp.Results {
			if r.KV != nil && r.KV.ModifyIndex != 0 {
				pairs = append(pairs, r.KV)
			}
		}
		s.Looked(pairs)
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

// When none of the hosts picked to ask at once does (they are gone, or
// the fleet shrank since the release before), a host that found the
// release asks for it later, by itself, and becomes the coordinator.
func TestRolloutAskedLateWhenNoPickedHostAsks(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	// A fleet of 5,000 hosts the release before; host-00 is not picked
	// to ask at once for this release, but is of the second pick (it
	// asks within a TTL).
	prev := prevDoc(t, s, 5000)
	sum := secondPick(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	asks := countAsks(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	if got := asks.Load(); got != 0 {
		t.Fatalf("host-00 asked for the release at once (%d writes): it is not picked", got)
	}
	testutil.Eventually(t, s.TTL+10*time.Second, func() error {
		kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, "app"), nil)
		if err != nil {
			return err
		}
		var rel Placement
		if kv == nil || json.Unmarshal(kv.Value, &rel) != nil || rel.Checksum != sum {
			return fmt.Errorf("the release key says %v", kv)
		}
		if !s.Coordinating() {
			return errors.New("host-00 asked, and does not coordinate")
		}
		return nil
	})
	if got := asks.Load(); got != 1 {
		t.Fatalf("%d writes to the release key; want 1", got)
	}
}

// secondPick returns a release for which node is of the second pick
// only: it does not ask at once, and asks within a TTL if nobody has.
func secondPick(t *testing.T, node string, prev *lock.Rollout) string {
	t.Helper()
	for i := range 100000 {
		c := fmt.Sprintf("sum%d", i)
		if !asksAtOnce(node, c, prev, Askers) && asksAtOnce(node, c, prev, 4*Askers) {
			return c
		}
	}
	t.Fatalf("no release for which %s is of the second pick only", node)
	return ""
}

// A host that would ask for a release late, when another release was
// asked for meanwhile (a later one, which the host has not looked at
// yet, waiting in line), does not ask over it: the fleet never goes
// back to the release it found first.
func TestRolloutAskedLateNeverOverANewerRelease(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	prev := prevDoc(t, s, 5000)
	older := secondPick(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := s.Rollout(ctx, older); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(Placement{Checksum: "newer"})
	if _, err := s.Client.KV().Put(&api.KVPair{Key: ReleaseKey(s.Prefix, "app"), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	// The late ask has looked and given up once asking is cleared.
	testutil.Eventually(t, s.TTL+10*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.asking != "" {
			return fmt.Errorf("still to ask for %s", s.asking)
		}
		return nil
	})
	kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, "app"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var rel Placement
	if kv == nil || json.Unmarshal(kv.Value, &rel) != nil || rel.Checksum != "newer" {
		t.Fatalf("the release key says %v after the late ask; want the newer release asked for", kv)
	}
}

// A host that sees another release asked for (it looks at it, a newer
// one) gives up its late ask of the release it found before; and one
// that finds a release it saw asked for long ago not asked for now (an
// operator publishing it again after another) asks for it late all the
// same.
func TestRolloutLateAskFollowsWhatTheHostSaw(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	prev := prevDoc(t, s, 5000)
	a := secondPick(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asking := func() string {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.asking
	}
	if _, _, err := s.Rollout(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := asking(); got != a {
		t.Fatalf("late ask of %q; want %s", got, a)
	}
	// Its follower reads the document, of the release before: nothing
	// said of a's ask.
	if doc, _, err := s.WaitRollout(ctx, 0); err != nil || doc == nil || doc.Checksum != "sum0" {
		t.Fatalf("the document of the release before: %+v, %v", doc, err)
	}
	if got := asking(); got != a {
		t.Fatalf("late ask of %q after the follower read the document of the release before; want %s", got, a)
	}
	b, _ := json.Marshal(Placement{Checksum: "newer"})
	if _, err := s.Client.KV().Put(&api.KVPair{Key: ReleaseKey(s.Prefix, "app"), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Rollout(ctx, "newer"); err != nil {
		t.Fatal(err)
	}
	if got := asking(); got != "" {
		t.Fatalf("late ask of %s still on after the host saw another release asked for", got)
	}
	// a published again, the host having seen it asked for before (its
	// document, say, and not the release asked for since): it finds it
	// not asked for now.
	s.sawAsked(a)
	if _, _, err := s.Rollout(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := asking(); got != a {
		t.Fatalf("late ask of %q after %s was published again; want %s", got, a, a)
	}
}

// A late ask that Consul refuses (it does not answer the write) is
// asked again: a host in line looks at nothing else until it is granted
// or moved out, and nobody else may ask.
func TestRolloutLateAskAgainAfterAFailure(t *testing.T) {
	hs := hosts(t, 1, 1)
	s := hs[0]
	prev := prevDoc(t, s, 5000)
	sum := secondPick(t, s.Node, prev)
	s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	var down atomic.Bool
	var refused atomic.Int64
	down.Store(true)
	path := "/v1/kv/" + ReleaseKey(s.Prefix, s.Service)
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPut && r.URL.Path == path && down.Load() {
			refused.Add(1)
			return nil, errors.New("connection refused")
		}
		return http.DefaultTransport.RoundTrip(r)
	})}})
	if err != nil {
		t.Fatal(err)
	}
	s.Client = c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := s.Rollout(ctx, sum); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, s.TTL+10*time.Second, func() error {
		if refused.Load() == 0 {
			return errors.New("no late ask yet")
		}
		return nil
	})
	down.Store(false)
	testutil.Eventually(t, s.TTL+10*time.Second, func() error {
		kv, _, err := s.Client.KV().Get(ReleaseKey(s.Prefix, "app"), nil)
		if err != nil {
			return err
		}
		var rel Placement
		if kv == nil || json.Unmarshal(kv.Value, &rel) != nil || rel.Checksum != sum {
			return fmt.Errorf("the release key says %v after a refused late ask", kv)
		}
		return nil
	})
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
