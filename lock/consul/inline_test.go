package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
)

// follower runs h's follower of the document, as the agent does, from
// the document as it is now: it counts the times a wait returns and
// keeps the last document it read.
type follower struct {
	returns atomic.Int64
	last    atomic.Pointer[lock.Rollout]
}

func follow(ctx context.Context, t *testing.T, h *Slots) *follower {
	f := &follower{}
	doc, index, err := h.WaitRollout(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.last.Store(doc)
	go func() {
		for ctx.Err() == nil {
			doc, next, err := h.WaitRollout(ctx, index)
			if err != nil {
				continue
			}
			index = next
			f.last.Store(doc)
			f.returns.Add(1)
		}
	}()
	return f
}

// inLineNow says why h's key is not in Consul, nil once it is.
func inLineNow(h *Slots) error {
	kv, _, err := h.Client.KV().Get(GrantKey(h.Prefix, h.Service, h.Node), nil)
	if err == nil && kv == nil {
		err = fmt.Errorf("%s not in line", h.Node)
	}
	return err
}

// waitKnownInLine waits until s's coordinator knows node to be in line
// for sum (or granted it), from a listing of the grants its run loop
// took: the key written is not enough, its listing may come later.
func waitKnownInLine(t *testing.T, s *Slots, sum, node string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		s.mu.Lock()
		c := s.coord
		s.mu.Unlock()
		if c == nil {
			return fmt.Errorf("%s does not coordinate", s.Node)
		}
		c.lineMu.Lock()
		defer c.lineMu.Unlock()
		if !slices.Contains(c.line[sum], node) {
			return fmt.Errorf("%s's coordinator does not know %s in line for %s (%v)", s.Node, node, sum, c.line)
		}
		return nil
	})
}

// waitForTheLine makes the first decision of a release wait for a host
// in line as long as a test may need (LineWait): the hosts in line
// reach the coordinator through its listing of the grants, which a
// loaded machine may slow past LineWait. Set before hosts, so that it
// is restored once their coordinators are closed.
func waitForTheLine(t *testing.T) {
	old := LineWait
	LineWait = time.Minute
	t.Cleanup(func() { LineWait = old })
}

// getInLine starts h's Acquire in the background and waits until its
// place in line is written; the channel gives Acquire's outcome.
func getInLine(ctx context.Context, t *testing.T, h *Slots) <-chan error {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		_, err := h.Acquire(ctx)
		got <- err
	}()
	testutil.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-got:
			got <- err // for the caller
			if err != nil {
				t.Fatalf("%s's wait for a slot ended before it was seen in line: %v", h.Node, err)
			}
			return nil // granted at once
		default:
		}
		return inLineNow(h)
	})
	return got
}

// nudge wakes the coordinator's decision: a record of the service
// changed.
func nudge(t *testing.T, h *Slots) {
	t.Helper()
	if _, err := h.Client.KV().Put(&api.KVPair{Key: h.Prefix + "/" + h.Service + "/nudge", Value: []byte(time.Now().String())}, nil); err != nil {
		t.Fatal(err)
	}
}

// A host waiting in line follows the coordinator's key, not the
// document: the document's writes (a wave opening or closing) wake the
// hosts that do not wait in line only. When the coordinator gives its
// lock back, the host in line wakes, becomes the coordinator and is
// granted.
func TestRolloutInLineFollowsTheCoordinatorNotTheDocument(t *testing.T) {
	hs := hosts(t, 3, 1)
	p := &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if !hs[0].Coordinating() {
			return errors.New("host-00 does not coordinate")
		}
		if _, wave, err := hs[1].Rollout(ctx, "sum1"); err != nil || wave != "b" {
			return fmt.Errorf("host-01 not placed in wave b (%q, %v)", wave, err)
		}
		return nil
	})
	// host-01 waits in line for wave b (it opens once a is done).
	hs[1].Want("sum1")
	got := getInLine(ctx, t, hs[1])
	waiting := follow(ctx, t, hs[1])
	other := follow(ctx, t, hs[2]) // not in line
	// Two writes of the document: wave a closes, and opens again.
	for _, open := range []bool{false, true} {
		p.set("a", open)
		nudge(t, hs[0])
		testutil.Eventually(t, 20*time.Second, func() error {
			if d := other.last.Load(); d == nil || d.Wave("a") == nil || d.Wave("a").Open != open {
				return fmt.Errorf("host-02 does not read wave a open=%v", open)
			}
			return nil
		})
	}
	if n := waiting.returns.Load(); n != 0 {
		t.Fatalf("host-01, in line, woke %d times on the document's writes", n)
	}
	select {
	case err := <-got:
		t.Fatalf("host-01 left the line: %v", err)
	default:
	}
	// The coordinator gives its lock back: host-01 wakes on it, takes
	// over, and is granted once wave b opens.
	hs[0].Close()
	testutil.Eventually(t, 20*time.Second, func() error {
		if waiting.returns.Load() == 0 {
			return errors.New("host-01's follower did not wake on the coordinator's leave")
		}
		return nil
	})
	p.set("b", true)
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		hs[1].Release(ctx)
	case <-ctx.Done():
		t.Fatal("host-01 was not granted once the coordinator left")
	}
	if !hs[1].Coordinating() && !hs[2].Coordinating() {
		t.Fatal("no host took over as the coordinator")
	}
}

// linePlanner takes the first host in line as the canary (wave a), as
// fleet/rollout's coordinator does, and notes the lines it was given.
type linePlanner struct {
	planner
	lines [][]string
}

func (p *linePlanner) PlanLine(ctx context.Context, sum string, inLine []string) (lock.Rollout, map[string]string, error) {
	doc, waves, err := p.planner.Plan(ctx, sum)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, inLine)
	if len(inLine) > 0 {
		for n := range waves {
			waves[n] = "b"
		}
		waves[inLine[0]] = "a"
	}
	return doc, waves, err
}

// The first decision of a release takes its canary among the hosts in
// line for it, granted with the document, rather than a host that has
// not found the release yet.
func TestRolloutCanaryIsAHostInLine(t *testing.T) {
	waitForTheLine(t)
	hs := hosts(t, 3, 1)
	p := &linePlanner{planner: planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// host-02 found the release first and waits in line for its plan.
	hs[2].Want("sum1")
	got := getInLine(ctx, t, hs[2])
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("host-02, in line, was not granted as the canary (lines planned from: %v)", p.lines)
	}
	defer hs[2].Release(ctx)
	if _, wave, err := hs[2].Rollout(ctx, "sum1"); err != nil || wave != "a" {
		t.Fatalf("host-02 granted in wave %q (%v); want a, the canary", wave, err)
	}
}

// soonLinePlanner fixes the plan of a release at its first decision,
// as fleet/rollout's coordinator does: the canary (wave a) is the first
// host in line, if any, else host-00; the others are in wave b. Its
// decisions wait while the test holds them, and its soon decision
// (lock.SoonPlanner) of a release not decided yet is a plain one, as
// fleet/rollout's is: without the hosts in line.
type soonLinePlanner struct {
	planner
	gmu     sync.Mutex
	gate    chan struct{} // nil: open
	entered chan struct{}
	fixed   map[string]map[string]string
	lines   [][]string
}

func (p *soonLinePlanner) wait(ctx context.Context) error {
	p.gmu.Lock()
	gate := p.gate
	p.gmu.Unlock()
	if gate == nil {
		return nil
	}
	select {
	case p.entered <- struct{}{}:
	default:
	}
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *soonLinePlanner) PlanLine(ctx context.Context, sum string, inLine []string) (lock.Rollout, map[string]string, error) {
	if err := p.wait(ctx); err != nil {
		return lock.Rollout{}, nil, err
	}
	doc, waves, err := p.planner.Plan(ctx, sum)
	p.gmu.Lock()
	defer p.gmu.Unlock()
	p.lines = append(p.lines, inLine)
	if p.fixed[sum] == nil {
		if len(inLine) > 0 {
			for n := range waves {
				waves[n] = "b"
			}
			waves[inLine[0]] = "a"
		}
		p.fixed[sum] = waves
	}
	return doc, maps.Clone(p.fixed[sum]), err
}

func (p *soonLinePlanner) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	return p.PlanLine(ctx, sum, nil)
}

func (p *soonLinePlanner) PlanSoon(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	return p.Plan(ctx, sum)
}

// The first decision of a release takes its canary among the hosts in
// line also when the last host of a wave of the release before was done
// just then (a decision "soon", lock.SoonPlanner, which knows nothing of
// the line). Four releases: the decision is soon in most, not all, runs
// of each.
func TestRolloutCanaryInLineWhenTheLastReleaseFinishesAtOnce(t *testing.T) {
	waitForTheLine(t)
	hs := hosts(t, 3, 1)
	p := &soonLinePlanner{planner: planner{open: map[string]bool{"a": true}, stop: map[string]bool{}},
		entered: make(chan struct{}, 1), fixed: map[string]map[string]string{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// host-00 coordinates sum1 and is granted it, its canary.
	hs[0].Want("sum1")
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	if _, err := hs[0].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	canary := hs[0]
	for i, next := range []*Slots{hs[2], hs[1], hs[2], hs[1]} {
		sum := fmt.Sprintf("sum%d", i+2)
		// A decision held; meanwhile the canary is done (the last host
		// of its wave), the next release is asked for, and a host gets
		// in line for it.
		p.gmu.Lock()
		p.gate = make(chan struct{})
		p.gmu.Unlock()
		nudge(t, hs[0])
		select {
		case <-p.entered:
		case <-ctx.Done():
			t.Fatal("no decision")
		}
		if err := canary.Release(ctx); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, func() error { return urgent(hs[0]) })
		b, _ := json.Marshal(Placement{Checksum: sum})
		if _, err := hs[0].Client.KV().Put(&api.KVPair{Key: ReleaseKey(hs[0].Prefix, "app"), Value: b}, nil); err != nil {
			t.Fatal(err)
		}
		p.gmu.Lock()
		close(p.gate)
		p.gate = nil
		p.gmu.Unlock()
		next.Want(sum)
		got := make(chan error, 1)
		go func() {
			_, err := next.Acquire(ctx)
			got <- err
		}()
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			p.gmu.Lock()
			defer p.gmu.Unlock()
			t.Fatalf("%s, in line for %s, was not granted as its canary: %v (lines planned from: %v)", next.Node, sum, p.fixed[sum], p.lines)
		}
		canary = next
	}
	canary.Release(ctx)
}

// urgent says whether s's coordinator was asked for a decision at once
// (a wave's last host done) and has not taken it yet.
func urgent(s *Slots) error {
	s.mu.Lock()
	c := s.coord
	s.mu.Unlock()
	if c == nil || len(c.urgent) == 0 {
		return errors.New("no decision asked for at once")
	}
	return nil
}

// A grant released is the last host of its wave done, and asks for a
// decision at once, also when the coordinator's listing of the grants
// sees it released before the watch of the grant does.
func TestRolloutReleaseListedFirstAsksForADecision(t *testing.T) {
	hs := hosts(t, 2, 1)
	p := &soonLinePlanner{planner: planner{open: map[string]bool{"a": true, "b": true}, stop: map[string]bool{}},
		entered: make(chan struct{}, 1), fixed: map[string]map[string]string{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	// The coordinator's watch of host-01's grant answers late.
	key := GrantKey(hs[0].Prefix, "app", "host-01")
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		q := r.URL.Query()
		if r.Method == http.MethodGet && r.URL.Path == "/v1/kv/"+key && q.Has("index") && !q.Has("recurse") {
			time.Sleep(500 * time.Millisecond)
		}
		return resp, err
	})}})
	if err != nil {
		t.Fatal(err)
	}
	hs[0].Client = c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	hs[1].Want("sum1")
	if _, err := hs[1].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	// A decision held, so the one asked for at once waits to be taken.
	p.gmu.Lock()
	p.gate = make(chan struct{})
	p.gmu.Unlock()
	defer func() {
		p.gmu.Lock()
		close(p.gate)
		p.gate = nil
		p.gmu.Unlock()
	}()
	nudge(t, hs[0])
	select {
	case <-p.entered:
	case <-ctx.Done():
		t.Fatal("no decision")
	}
	if err := hs[1].Release(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error { return urgent(hs[0]) })
}

// A coordinator taking over a release its predecessor decided does not
// wait for a host in line (LineWait) before its first decision: nobody
// need be in line (every host waits for an approval, say).
func TestRolloutTakeoverDoesNotWaitForTheLine(t *testing.T) {
	waitForTheLine(t) // which the takeover must not wait for
	hs := hosts(t, 2, 1)
	p := &linePlanner{planner: planner{open: map[string]bool{}, stop: map[string]bool{"a": true, "b": true}}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// host-01 is in line while host-00 asks: the first decision takes
	// the line at once, and ends host-01's wait (its wave does not open
	// by itself).
	hs[1].Want("sum1")
	got := getInLine(ctx, t, hs[1])
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, lock.ErrMoved) {
		t.Fatalf("host-01's wait ended with %v, want moved out of line", err)
	}
	// The document's index, and whether a coordinator holds it (one
	// that gives its lock back releases it: a write, not a decision).
	doc := func() (uint64, bool, error) {
		kv, _, err := hs[0].Client.KV().Get(RolloutKey(hs[0].Prefix, "app"), &api.QueryOptions{RequireConsistent: true})
		if err == nil && kv == nil {
			err = errors.New("no document")
		}
		if err != nil {
			return 0, false, err
		}
		return kv.ModifyIndex, kv.Session != "", nil
	}
	first, _, err := doc()
	if err != nil {
		t.Fatal(err)
	}
	coordinator, other := hs[0], hs[1]
	if !coordinator.Coordinating() {
		coordinator, other = other, coordinator
	}
	coordinator.Close()
	// Nobody in line: the other host's look elects it, and its first
	// decision, written at once, is the document's next write.
	testutil.Eventually(t, 20*time.Second, func() error {
		if _, _, err := other.Rollout(ctx, "sum1"); err != nil {
			return err
		}
		if !other.Coordinating() {
			return errors.New("no coordinator took over")
		}
		return nil
	})
	testutil.Eventually(t, 20*time.Second, func() error {
		idx, held, err := doc()
		if err == nil && (idx == first || !held) {
			err = errors.New("the new coordinator has not written its document")
		}
		return err
	})
}

// blockingPlanner's decision lasts until its context ends; ended says
// when it has returned.
type blockingPlanner struct {
	started chan struct{}
	ended   atomic.Bool
}

func (p *blockingPlanner) Plan(ctx context.Context, sum string) (lock.Rollout, map[string]string, error) {
	select {
	case p.started <- struct{}{}:
	default:
	}
	<-ctx.Done()
	time.Sleep(200 * time.Millisecond) // a decision slow to wind down (a read under way)
	p.ended.Store(true)
	return lock.Rollout{}, nil, ctx.Err()
}

// Close returns once the coordinator's decisions have ended: nothing of
// a stopped coordinator runs on (a reload starts another).
func TestCloseWaitsForTheDecisions(t *testing.T) {
	hs := hosts(t, 1, 1)
	p := &blockingPlanner{started: make(chan struct{}, 1)}
	hs[0].SetPlanner(p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := hs[0].Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.started:
	case <-ctx.Done():
		t.Fatal("the coordinator did not start deciding")
	}
	hs[0].Close()
	if !p.ended.Load() {
		t.Fatal("Close returned while the coordinator's decision still ran")
	}
}

// askAndPlace has asker ask for sum1 (it coordinates) and waits until
// h is placed in wave b.
func askAndPlace(ctx context.Context, t *testing.T, asker, h *Slots) {
	t.Helper()
	if _, _, err := asker.Rollout(ctx, "sum1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if _, wave, err := h.Rollout(ctx, "sum1"); err != nil || wave != "b" {
			return fmt.Errorf("%s not placed in wave b (%q, %v)", h.Node, wave, err)
		}
		return nil
	})
}

// waited is what one WaitRollout returned.
type waited struct {
	doc   *lock.Rollout
	index uint64
	err   error
}

// waitRollout runs one WaitRollout of h from index in the background.
func waitRollout(ctx context.Context, h *Slots, index uint64) <-chan waited {
	out := make(chan waited, 1)
	go func() {
		d, next, err := h.WaitRollout(ctx, index)
		out <- waited{d, next, err}
	}()
	return out
}

// waitFollowing waits until a WaitRollout of h waits.
func waitFollowing(t *testing.T, h *Slots) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.following == 0 {
			return fmt.Errorf("%s's follower does not wait yet", h.Node)
		}
		return nil
	})
}

// A host that leaves the line takes, for its follower of the document,
// the document its look once granted read, rather than asking Consul
// again for what it has seen; a later write of the document still wakes
// its follower.
func TestRolloutLeavingTheLineTakesTheDocumentItLookedAt(t *testing.T) {
	hs := hosts(t, 2, 1)
	p := &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	// host-01's reads of the document from Consul, counted.
	var docReads atomic.Int64
	docKey := "/v1/kv/" + RolloutKey(hs[1].Prefix, hs[1].Service)
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodGet && r.URL.Path == docKey {
			docReads.Add(1)
		}
		return http.DefaultTransport.RoundTrip(r)
	})}})
	if err != nil {
		t.Fatal(err)
	}
	hs[1].Client = c
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	askAndPlace(ctx, t, hs[0], hs[1])
	// The follower's index: the document with wave b closed.
	_, before, err := hs[1].WaitRollout(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	hs[1].Want("sum1")
	got := getInLine(ctx, t, hs[1])
	p.set("b", true)
	nudge(t, hs[0])
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("host-01 was not granted once wave b opened")
	}
	// Granted, host-01 looks at the rollout (wave b open: the document
	// may come just after the grant), and its follower, in line, waits
	// on coord from the index before.
	testutil.Eventually(t, 20*time.Second, func() error {
		doc, wave, err := hs[1].Rollout(ctx, "sum1")
		if err != nil || wave != "b" || doc.Wave("b") == nil || !doc.Wave("b").Open {
			return fmt.Errorf("host-01's look once granted: wave %q of %+v (%v)", wave, doc, err)
		}
		return nil
	})
	kv, _, err := hs[1].Client.KV().Get(RolloutKey(hs[1].Prefix, hs[1].Service), nil)
	if err != nil || kv == nil {
		t.Fatalf("the document: %v, %v", kv, err)
	}
	follow := func(index uint64) <-chan waited { return waitRollout(ctx, hs[1], index) }
	left := follow(before)
	waitFollowing(t, hs[1])
	reads := docReads.Load()
	hs[1].Release(ctx)
	var w waited
	select {
	case w = <-left:
	case <-ctx.Done():
		t.Fatal("host-01's follower did not return once it left the line")
	}
	if w.err != nil || w.doc == nil || w.doc.Wave("b") == nil || !w.doc.Wave("b").Open || w.index != kv.ModifyIndex {
		t.Fatalf("host-01 left the line: its follower read %+v at index %d (%v); want wave b open, index %d", w.doc, w.index, w.err, kv.ModifyIndex)
	}
	if n := docReads.Load() - reads; n != 0 {
		t.Fatalf("host-01's follower read the document from Consul %d times once it left the line; its look had read it", n)
	}
	// The next write of the document wakes it.
	next := follow(w.index)
	p.set("b", false)
	nudge(t, hs[0])
	select {
	case w = <-next:
	case <-ctx.Done():
		t.Fatal("host-01's follower did not wake on the document's next write")
	}
	if w.err != nil || w.doc == nil || w.doc.Wave("b") == nil || w.doc.Wave("b").Open {
		t.Fatalf("host-01's follower read %+v (%v); want wave b closed", w.doc, w.err)
	}
}
