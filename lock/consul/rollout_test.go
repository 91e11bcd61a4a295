package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
)

// planner is a rollout whose waves the test opens: host-00 in wave a,
// the others in wave b.
type planner struct {
	mu    sync.Mutex
	open  map[string]bool
	stop  map[string]bool // closed, and not opening by itself
	calls int
}

func (p *planner) Plan(_ context.Context, sum string) (lock.Rollout, map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	doc := lock.Rollout{Checksum: sum}
	for _, w := range []string{"a", "b"} {
		ws := lock.WaveState{Name: w, Open: p.open[w], Queue: !p.open[w] && !p.stop[w]}
		if !ws.Open {
			ws.Reason = "closed by the test"
		}
		doc.Waves = append(doc.Waves, ws)
	}
	waves := map[string]string{}
	for i := range 4 {
		waves[node(i)] = "b"
	}
	waves[node(0)] = "a"
	return doc, waves, nil
}

func (p *planner) set(wave string, open bool) {
	p.mu.Lock()
	p.open[wave] = open
	p.mu.Unlock()
}

func node(i int) string { return []string{"host-00", "host-01", "host-02", "host-03"}[i] }

// The coordinator places each host in its wave and writes one document;
// a host that waits in line for a release is granted only once its wave
// opens; a wave that no longer opens by itself (an approval, say) ends
// the wait.
func TestRolloutGrantsOnlyOpenWaves(t *testing.T) {
	hs := hosts(t, 4, 2)
	p := &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var doc *lock.Rollout
	var wave string
	testutil.Eventually(t, 20*time.Second, func() error {
		var err error
		if doc, wave, err = hs[1].Rollout(ctx, "sum1"); err == nil && wave == "" {
			err = errors.New("host-01 not placed in a wave of sum1")
		}
		return err
	})
	if wave != "b" || doc.Wave("b") == nil || doc.Wave("b").Open || !doc.Wave("b").Queue || doc.Wave("a") == nil || !doc.Wave("a").Open {
		t.Fatalf("host-01: wave %q of %+v", wave, doc)
	}
	// host-01 asks for a slot while its wave is closed: no grant.
	hs[1].Want("sum1")
	got := make(chan error, 1)
	go func() {
		_, err := hs[1].Acquire(ctx)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("host-01 granted while wave b is closed (err %v)", err)
	case <-time.After(2 * time.Second):
	}
	// host-00's wave is open.
	hs[0].Want("sum1")
	if _, err := hs[0].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	hs[0].Release(ctx)
	p.set("b", true)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	hs[1].Release(ctx)
	testutil.Eventually(t, 10*time.Second, func() error {
		d, _, err := hs[2].WaitRollout(ctx, 0)
		if err == nil && (d == nil || !d.Wave("b").Open) {
			err = errors.New("the document does not say wave b is open")
		}
		return err
	})
	// A wave closed that does not open by itself ends the wait in line.
	p.set("b", false)
	p.mu.Lock()
	p.stop["b"] = true
	p.mu.Unlock()
	testutil.Eventually(t, 20*time.Second, func() error {
		d, _, err := hs[2].Rollout(ctx, "sum1")
		if err == nil && (d == nil || d.Wave("b").Open || d.Wave("b").Queue) {
			err = errors.New("the document does not say wave b stopped")
		}
		return err
	})
	hs[2].Want("sum1")
	if _, err := hs[2].Acquire(ctx); !errors.Is(err, lock.ErrMoved) {
		t.Fatalf("host-02 waited for a wave that stopped: %v", err)
	}
	// A slot outside the rollout (a revert) waits for no wave.
	hs[3].Want("")
	if _, err := hs[3].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	hs[3].Release(ctx)
}

// Hosts in line for a wave follow the coordinator's key: when the
// coordinator dies, its session's release of the key wakes them and
// one takes over, though none looks for a coordinator on its own for
// minutes (CheckCoordinator); the new one grants as the old one would.
func TestRolloutFollowersElectWhenTheCoordinatorDies(t *testing.T) {
	defer func(d time.Duration) { CheckCoordinator = d }(CheckCoordinator)
	CheckCoordinator = time.Minute // a host in line would look after 6 minutes
	hs := hosts(t, 3, 1)
	p := &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if !hs[0].Coordinating() {
			return errors.New("host-00 does not coordinate")
		}
		for _, h := range hs[1:] {
			if _, wave, err := h.Rollout(ctx, "sum1"); err != nil || wave == "" {
				return fmt.Errorf("%s not placed (%v)", h.Node, err)
			}
		}
		return nil
	})
	got := make(chan error, 2)
	for _, h := range hs[1:] {
		go func() { // the agent's follower of the document
			var index uint64
			for ctx.Err() == nil {
				if _, next, err := h.WaitRollout(ctx, index); err == nil {
					index = next
				}
			}
		}()
		h.Want("sum1")
		go func() {
			_, err := h.Acquire(ctx)
			if err == nil {
				h.Release(ctx)
			}
			got <- err
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		pairs, _, err := hs[0].Client.KV().Keys(GrantPrefix(hs[0].Prefix, hs[0].Service), "", nil)
		if err == nil && len(pairs) < 2 {
			err = fmt.Errorf("%d hosts in line", len(pairs))
		}
		return err
	})
	hs[0].Kill() // as kill -9: its session expires within twice its TTL
	p.set("b", true)
	for range 2 {
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("the hosts in line were not granted: no coordinator took over")
		}
	}
	if !hs[1].Coordinating() && !hs[2].Coordinating() {
		t.Fatal("neither host in line coordinates")
	}
}

// slowPlanner takes a while to decide, as reading thousands of records
// from a busy Consul does.
type slowPlanner struct {
	planner
	delay time.Duration
}

func (p *slowPlanner) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	select {
	case <-time.After(p.delay):
	case <-ctx.Done():
		return lock.Rollout{}, nil, ctx.Err()
	}
	return p.planner.Plan(ctx, sum)
}

// A coordinator whose first decision takes longer than IdleResign keeps
// its lock: nobody waits for a slot yet, but a release is asked for.
func TestRolloutSlowDecisionKeepsTheCoordinator(t *testing.T) {
	hs := hosts(t, 2, 1)
	p := &slowPlanner{planner: planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}, delay: 2 * IdleResign}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 4*IdleResign, func() error {
		if doc, _, err := hs[1].WaitRollout(ctx, 0); err != nil || doc == nil || doc.Checksum != "sum1" {
			return fmt.Errorf("no document of sum1 (%v)", err)
		}
		return nil
	})
	p.mu.Lock()
	calls := p.calls
	p.mu.Unlock()
	if calls != 1 || !hs[0].Coordinating() {
		t.Fatalf("%d decisions, host-00 coordinating: %v; want one, by host-00", calls, hs[0].Coordinating())
	}
}

// An agent stopped or reloaded gives its coordinator's lock back
// (Close): an election it started in the background (the release asked
// for, nobody coordinating) must not take the lock after that, in an
// agent that no longer runs this config (a reload) or that exits a
// moment later (`agent --once`), leaving the fleet without a working
// coordinator.
func TestRolloutNoElectionAfterClose(t *testing.T) {
	hs := hosts(t, 1, 1)
	h := hs[0]
	h.SetPlanner(&planner{open: map[string]bool{}, stop: map[string]bool{}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The release asked for by another host, which then died before it
	// took the coordinator's lock.
	b, _ := json.Marshal(Placement{Checksum: "sum1"})
	if _, err := h.Client.KV().Put(&api.KVPair{Key: ReleaseKey(h.Prefix, h.Service), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.Rollout(ctx, "sum1"); err != nil { // starts an election in the background
		t.Fatal(err)
	}
	h.Close()
	// The election waits up to 10 × ElectionSpread before it tries.
	deadline := time.Now().Add(10*ElectionSpread + 2*time.Second)
	for time.Now().Before(deadline) {
		if h.Coordinating() {
			t.Fatal("the closed agent took the coordinator's lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if kv, _, err := h.Client.KV().Get(CoordKey(h.Prefix, h.Service), nil); err != nil {
		t.Fatal(err)
	} else if kv != nil && kv.Session != "" {
		t.Fatalf("the coordinator's lock is held after Close: %s", kv.Value)
	}
}

// gated is a planner whose decisions wait while the test holds them.
type gated struct {
	*planner
	mu   sync.Mutex
	gate chan struct{}
}

func (g *gated) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return lock.Rollout{}, nil, ctx.Err()
	}
	return g.planner.Plan(ctx, sum)
}

func (g *gated) hold() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gated) free() {
	g.mu.Lock()
	close(g.gate)
	g.mu.Unlock()
}

// Hosts get in line for a release as soon as they find it, before the
// coordinator has planned it (while its plan is still the previous
// release's): they wait for the plan rather than being sent away, and
// each is granted once the plan puts it in an open wave.
func TestRolloutHostsWaitInLineForThePlan(t *testing.T) {
	hs := hosts(t, 3, 2)
	g := &gated{planner: &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}, gate: make(chan struct{})}
	close(g.gate)
	for _, h := range hs {
		h.SetPlanner(g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testutil.Eventually(t, 20*time.Second, func() error {
		_, wave, err := hs[0].Rollout(ctx, "sum0")
		if err == nil && wave == "" {
			err = errors.New("host-00 not placed in a wave of sum0")
		}
		return err
	})
	// The next release: asked for, and its plan held back.
	g.hold()
	if _, wave, err := hs[0].Rollout(ctx, "sum1"); err != nil || wave != "" {
		t.Fatalf("sum1 placed before its plan: %q, %v", wave, err)
	}
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(hs))
	for i, h := range hs {
		h.Want("sum1")
		go func() {
			_, err := h.Acquire(ctx)
			results <- result{i, err}
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		pairs, _, err := hs[0].Client.KV().List(GrantPrefix(hs[0].Prefix, "app"), nil)
		if err == nil && len(pairs) < len(hs) {
			err = fmt.Errorf("%d hosts in line", len(pairs))
		}
		return err
	})
	g.free()
	// host-00 (wave a, open) is granted; the others (wave b, in line)
	// are not, and wait.
	r := <-results
	if r.err != nil || r.i != 0 {
		t.Fatalf("first out of line: host %d: %v", r.i, r.err)
	}
	select {
	case r := <-results:
		t.Fatalf("host %d out of line while its wave is closed: %v", r.i, r.err)
	default:
	}
	hs[0].Release(ctx)
	g.set("b", true)
	for range 2 {
		if r := <-results; r.err != nil {
			t.Fatalf("host %d: %v", r.i, r.err)
		}
	}
}

// A host whose follower of the document last saw it held, and waits on
// (a blocking query on a Consul that restarted without its data), still
// becomes the coordinator when its own look finds nobody holding the
// coordinator's key.
func TestRolloutElectsDespiteAStaleFollower(t *testing.T) {
	hs := hosts(t, 1, 1)
	hs[0].SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	hs[0].mu.Lock()
	hs[0].docHeld, hs[0].following = true, 1 // as the follower left them
	hs[0].mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if !hs[0].Coordinating() {
			return errors.New("no coordinator elected")
		}
		return nil
	})
}

// A release asked for by a host that took no lock (it died, or the whole
// fleet reading the release at once slows it down): the others wait at
// least a quarter of the session TTL before they try, and one takes
// over within the TTL and a few seconds, with one session created.
func TestRolloutAskedForElectsQuietly(t *testing.T) {
	hs := hosts(t, 6, 1)
	inLine(t, hs)
	b, _ := json.Marshal(Placement{Checksum: "sum1"})
	if _, err := hs[0].Client.KV().Put(&api.KVPair{Key: ReleaseKey(hs[0].Prefix, hs[0].Service), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	creates := countCreates(t, hs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	for _, s := range hs {
		s.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
		if _, _, err := s.Rollout(ctx, "sum1"); err != nil {
			t.Fatal(err)
		}
	}
	var took time.Duration
	testutil.Eventually(t, hs[0].TTL+5*time.Second, func() error {
		for _, s := range hs {
			if s.Coordinating() {
				took = time.Since(start)
				return nil
			}
		}
		return errors.New("no coordinator elected")
	})
	if took < hs[0].TTL/4 {
		t.Errorf("a coordinator elected %v after the release was asked for: before a quarter of the TTL (%v)", took, hs[0].TTL/4)
	}
	if n := creates.Load(); n != 1 {
		t.Errorf("%d sessions created to elect; want 1", n)
	}
}

// The first decision of a release is written with the first grants it
// lets the coordinator make, in their transaction: the hosts in line for
// its open wave (the canary) are granted as the document is written, not
// after every host that follows the document has read it again.
func TestRolloutDocumentWrittenWithTheGrants(t *testing.T) {
	hs := hosts(t, 2, 1)
	g := &gated{planner: &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}, gate: make(chan struct{})}
	for _, h := range hs {
		h.SetPlanner(g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Asked for (host-01 coordinates), its plan held back while host-00
	// gets in line.
	if _, wave, err := hs[1].Rollout(ctx, "sum1"); err != nil || wave != "" {
		t.Fatalf("sum1 placed before its plan: %q, %v", wave, err)
	}
	hs[0].Want("sum1")
	got := make(chan error, 1)
	go func() {
		_, err := hs[0].Acquire(ctx)
		got <- err
	}()
	key := GrantKey(hs[0].Prefix, "app", "host-00")
	testutil.Eventually(t, 10*time.Second, func() error {
		kv, _, err := hs[0].Client.KV().Get(key, nil)
		if err == nil && kv == nil {
			err = errors.New("host-00 not in line")
		}
		return err
	})
	// And the coordinator knows it, as it must to grant it with the
	// document.
	waitKnownInLine(t, hs[1], "sum1", "host-00")
	g.free()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	defer hs[0].Release(ctx)
	q := &api.QueryOptions{RequireConsistent: true}
	gk, _, err := hs[0].Client.KV().Get(key, q)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := hs[0].Client.KV().Get(RolloutKey(hs[0].Prefix, "app"), q)
	if err != nil {
		t.Fatal(err)
	}
	var doc lock.Rollout
	if d == nil || json.Unmarshal(d.Value, &doc) != nil || doc.Checksum != "sum1" || doc.Wave("a") == nil || !doc.Wave("a").Open {
		t.Fatalf("the document does not say wave a of sum1 is open: %v", d)
	}
	if gk == nil || d.ModifyIndex != gk.ModifyIndex {
		t.Fatalf("host-00 granted at index %d, the document opening its wave written at %d: not one transaction", gk.ModifyIndex, d.ModifyIndex)
	}
	// Its wave key too: the hosts of open waves and waves in line are
	// not placed before the document, which would wait for thousands of
	// keys written.
	wk, _, err := hs[0].Client.KV().Get(WaveKey(hs[0].Prefix, "app", "host-00"), q)
	if err != nil {
		t.Fatal(err)
	}
	var place Placement
	if wk == nil || json.Unmarshal(wk.Value, &place) != nil || place != (Placement{Checksum: "sum1", Wave: "a"}) || wk.ModifyIndex != gk.ModifyIndex {
		t.Fatalf("host-00's wave key %v not written with its grant at index %d", wk, gk.ModifyIndex)
	}
	if _, wave, err := hs[0].Rollout(ctx, "sum1"); err != nil || wave != "a" {
		t.Fatalf("host-00 granted reads its wave %q, %v; want a", wave, err)
	}
}

// A host that finds the release asked for by another host and nobody
// coordinating (the asker being elected) gets in line a moment later:
// its look returns after ElectionPause at least, so that the asker's
// session and lock are not queued behind the fleet's places in line.
// A host that finds a coordinator does not wait.
func TestRolloutAskedForWaitsForTheElection(t *testing.T) {
	hs := hosts(t, 2, 1)
	for _, h := range hs {
		h.SetPlanner(&planner{open: map[string]bool{"a": true}, stop: map[string]bool{}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Asked for by a host that has not taken the coordinator's lock.
	b, _ := json.Marshal(Placement{Checksum: "sum1"})
	if _, err := hs[0].Client.KV().Put(&api.KVPair{Key: ReleaseKey(hs[0].Prefix, "app"), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, _, err := hs[1].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < ElectionPause {
		t.Fatalf("the look returned after %v, before the election's pause of %v", d, ElectionPause)
	}
}

// TestRolloutDocumentWrittenWithAFullBatchOfGrants: with more hosts in
// line for the wave a decision opens than one transaction can grant, the
// document still goes with the first of them (the grants and the
// document within Consul's 64 operations), and every host is granted.
func TestRolloutDocumentWrittenWithAFullBatchOfGrants(t *testing.T) {
	const n = 40
	hs := hosts(t, n+1, n)
	g := &allInA{gate: make(chan struct{})}
	for _, h := range hs {
		g.nodes = append(g.nodes, h.Node)
		h.SetPlanner(g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Asked for by the last host (it coordinates), its plan held back
	// while the others get in line.
	if _, wave, err := hs[n].Rollout(ctx, "sum1"); err != nil || wave != "" {
		t.Fatalf("sum1 placed before its plan: %q, %v", wave, err)
	}
	got := make(chan error, n)
	for _, h := range hs[:n] {
		h.Want("sum1")
		go func() {
			_, err := h.Acquire(ctx)
			got <- err
		}()
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		keys, _, err := hs[0].Client.KV().Keys(GrantPrefix(hs[0].Prefix, "app"), "", nil)
		if err == nil && len(keys) < n {
			err = fmt.Errorf("%d of %d hosts in line", len(keys), n)
		}
		return err
	})
	close(g.gate)
	for range n {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	q := &api.QueryOptions{RequireConsistent: true}
	d, _, err := hs[0].Client.KV().Get(RolloutKey(hs[0].Prefix, "app"), q)
	if err != nil {
		t.Fatal(err)
	}
	grants, _, err := hs[0].Client.KV().List(GrantPrefix(hs[0].Prefix, "app"), q)
	if err != nil {
		t.Fatal(err)
	}
	with := 0
	for _, kv := range grants {
		if d != nil && kv.ModifyIndex == d.ModifyIndex {
			with++
		}
	}
	if with == 0 {
		t.Fatalf("no grant written with the document (index %v): a full batch and the document did not fit one transaction", d)
	}
	for _, h := range hs[:n] {
		h.Release(ctx)
	}
}

// allInA plans every host of nodes into one open wave "a", once its gate
// is closed.
type allInA struct {
	nodes []string
	gate  chan struct{}
}

func (p *allInA) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	select {
	case <-p.gate:
	case <-ctx.Done():
		return lock.Rollout{}, nil, ctx.Err()
	}
	waves := map[string]string{}
	for _, n := range p.nodes {
		waves[n] = "a"
	}
	return lock.Rollout{Checksum: sum, Waves: []lock.WaveState{{Name: "a", Open: true, Hosts: len(p.nodes)}}}, waves, nil
}
