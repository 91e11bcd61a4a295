package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var (
	server    *rig.Consul
	serverErr error
)

func TestMain(m *testing.M) {
	server, serverErr = rig.StartConsul()
	// A waiting host looks for a coordinator often: the failover tests
	// wait for a session TTL, not for this.
	CheckCoordinator = time.Second
	ListGap = 100 * time.Millisecond
	IdleResign = 3 * time.Second
	code := m.Run()
	if server != nil {
		server.Stop()
	}
	os.Exit(code)
}

func client(t *testing.T) *api.Client {
	t.Helper()
	testutil.RequireServer(t, "Consul", serverErr)
	c, err := api.NewClient(&api.Config{Address: server.Addr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hosts(t *testing.T, n, limit int) []*Slots {
	var out []*Slots
	prefix := "test/" + t.Name()
	// A fresh service, also when a test runs again (-count).
	client(t).KV().DeleteTree(prefix+"/", nil)
	for i := range n {
		s := New(client(t), prefix, "app", fmt.Sprintf("host-%02d", i), 10*time.Second, limit)
		t.Cleanup(s.Close)
		out = append(out, s)
	}
	return out
}

// granted counts the live grants in Consul, as a new coordinator would.
func granted(t *testing.T, s *Slots) (int, error) {
	pairs, _, err := s.Client.KV().List(GrantPrefix(s.Prefix, s.Service), &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range pairs {
		var g Grant
		if kv.Session != "" && json.Unmarshal(kv.Value, &g) == nil && g.State == StateGranted {
			n++
		}
	}
	return n, nil
}

// watchGrants samples the live grants until stop closes and returns the
// most seen at once.
func watchGrants(t *testing.T, s *Slots, stop <-chan struct{}) <-chan int {
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
			if n, err := granted(t, s); err == nil {
				most = max(most, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return out
}

func TestGrantsNeverExceedTheLimit(t *testing.T) {
	const n, limit = 12, 3
	hs := hosts(t, n, limit)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	most := watchGrants(t, hs[0], stop)
	var holding, peak atomic.Int32
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Go(func() {
			if _, err := h.Acquire(ctx); err != nil {
				t.Errorf("%s: %v", h.Node, err)
				return
			}
			cur := holding.Add(1)
			for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
			}
			time.Sleep(50 * time.Millisecond)
			holding.Add(-1)
			if err := h.Release(ctx); err != nil {
				t.Errorf("%s: release: %v", h.Node, err)
			}
		})
	}
	wg.Wait()
	close(stop)
	if p := peak.Load(); p > limit || p < 2 {
		t.Errorf("%d hosts held a slot at once; want 2..%d", p, limit)
	}
	if m := <-most; m > limit {
		t.Errorf("Consul showed %d grants at once; limit %d", m, limit)
	}
}

// A coordinator that dies (its session left to expire, as after kill -9)
// is replaced by a waiting host; the new one counts the grants still
// live, so the limit holds across the change, and every host gets its
// turn.
func TestCoordinatorDiesMidWave(t *testing.T) {
	const n, limit = 8, 2
	hs := hosts(t, n, limit)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	most := watchGrants(t, hs[0], stop)
	// The first host takes a slot and so becomes the coordinator.
	if _, err := hs[0].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if !hs[0].Coordinating() {
		t.Fatal("the first host to wait does not coordinate")
	}
	var wg sync.WaitGroup
	done := make(chan string, n)
	for _, h := range hs[1:] {
		wg.Go(func() {
			if _, err := h.Acquire(ctx); err != nil {
				t.Errorf("%s: %v", h.Node, err)
				return
			}
			time.Sleep(300 * time.Millisecond)
			h.Release(ctx)
			done <- h.Node
		})
	}
	// One host other than the coordinator's holds the second slot.
	<-done
	start := time.Now()
	hs[0].Kill() // the coordinator's process, and its slot with it
	wg.Wait()
	took := time.Since(start)
	close(stop)
	if m := <-most; m > limit {
		t.Errorf("Consul showed %d grants at once across the failover; limit %d", m, limit)
	}
	coordinators := 0
	for _, h := range hs[1:] {
		if h.Coordinating() {
			coordinators++
		}
	}
	if coordinators != 1 {
		t.Errorf("%d hosts coordinate after the failover; want 1", coordinators)
	}
	t.Logf("the remaining %d hosts finished %s after the coordinator died", n-2, took.Round(time.Millisecond))
}

// A granted host that dies frees its slot when its session expires.
func TestDeadHostFreesItsSlotByTTL(t *testing.T) {
	hs := hosts(t, 2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// host-00 is granted (and coordinates: its coordinator stands for
	// another agent's, and lives on); then it dies holding the slot.
	if _, err := hs[0].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		if _, err := hs[1].Acquire(ctx); err != nil {
			t.Error(err)
		}
		got <- time.Now()
	}()
	died := time.Now()
	hs[0].dieHolding()
	select {
	case at := <-got:
		// Consul expires a session between its TTL and twice it.
		if d := at.Sub(died); d > 2*hs[0].TTL+5*time.Second {
			t.Errorf("the slot freed %s after its holder died; TTL %s", d, hs[0].TTL)
		}
	case <-ctx.Done():
		t.Fatal("the dead host's slot was never freed")
	}
}

// dieHolding drops the host's session without destroying it, as kill -9
// of an agent holding a slot would, but leaves its coordinator running.
func (s *Slots) dieHolding() {
	s.mu.Lock()
	se := s.held
	s.held = nil
	s.mu.Unlock()
	se.abandon()
}

// Agents of the older dropship (consul/api's semaphore) and newer ones
// (grants) serving one service keep to one limit together.
func TestOlderAgentsAndGrantsShareTheLimit(t *testing.T) {
	const limit = 2
	hs := hosts(t, 5, limit)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var holding, peak atomic.Int32
	hold := func() {
		cur := holding.Add(1)
		for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
		}
		time.Sleep(40 * time.Millisecond)
		holding.Add(-1)
	}
	var wg sync.WaitGroup
	for round := range 3 {
		for i := range 4 {
			c := client(t)
			sem, err := c.SemaphoreOpts(&api.SemaphoreOptions{
				Prefix: LegacyPrefix(hs[0].Prefix, "app"), Limit: limit,
				Value: []byte(fmt.Sprintf("old-%d-%d", round, i)), SessionTTL: "10s",
			})
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				if _, err := sem.Acquire(ctx.Done()); err != nil {
					t.Errorf("older agent: %v", err)
					return
				}
				hold()
				sem.Release()
			})
		}
		for _, h := range hs {
			wg.Go(func() {
				if _, err := h.Acquire(ctx); err != nil {
					t.Errorf("%s: %v", h.Node, err)
					return
				}
				hold()
				h.Release(ctx)
			})
		}
		wg.Wait()
	}
	if p := peak.Load(); p > limit {
		t.Errorf("%d hosts, older and newer, held a slot at once; limit %d", p, limit)
	}
}

// A granted host stopped past its TTL (SIGSTOP, a frozen VM) and resumed
// is told its slot is no longer held before its renewal notices (the
// lost channel is still open then): its monotonic clock ran on.
func TestHeldFalseAfterAPausePastTheTTL(t *testing.T) {
	hs := hosts(t, 1, 1)
	h := hs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lost, err := h.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release(ctx)
	if !h.Held() {
		t.Fatal("a slot just granted is not held")
	}
	// As after a pause: the last renewal Consul answered is a TTL old.
	h.mu.Lock()
	se := h.held
	h.mu.Unlock()
	se.mu.Lock()
	se.renewed = time.Now().Add(-h.TTL)
	se.mu.Unlock()
	select {
	case <-lost:
		t.Fatal("the renewal noticed already: the test shows nothing")
	default:
	}
	if h.Held() {
		t.Fatal("a slot whose session was last renewed a TTL ago is still held")
	}
}

// countCreates points the hosts' clients at one that counts the sessions
// they create.
func countCreates(t *testing.T, hs []*Slots) *atomic.Int64 {
	return countRequests(t, hs, func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/v1/session/create") })
}

// countRequests points the hosts' clients at one that counts their
// requests that match.
func countRequests(t *testing.T, hs []*Slots, match func(*http.Request) bool) *atomic.Int64 {
	t.Helper()
	n := new(atomic.Int64)
	c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if match(r) {
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

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// inLine gives each host a session of its own, as its place in line would.
func inLine(t *testing.T, hs []*Slots) {
	t.Helper()
	for _, s := range hs {
		se, err := newSession(context.Background(), s.Client, "dropship "+s.Node+" "+s.Service, s.TTL, api.SessionBehaviorDelete)
		if err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.held = se
		s.mu.Unlock()
		t.Cleanup(func() { s.Release(context.Background()) })
	}
}

// Hosts in line that all find no coordinator at once try its lock with
// the sessions they hold: only the one that takes it creates a session.
func TestElectionCreatesOneSession(t *testing.T) {
	hs := hosts(t, 8, 1)
	inLine(t, hs)
	creates := countCreates(t, hs)
	var wg sync.WaitGroup
	for _, s := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.startCoordinator()
		}()
	}
	wg.Wait()
	coords := 0
	for _, s := range hs {
		if s.Coordinating() {
			coords++
		}
	}
	if coords != 1 || creates.Load() != 1 {
		t.Fatalf("%d coordinators, %d sessions created; want 1 and 1", coords, creates.Load())
	}
	// The lock is the coordinator's own session's: its host's place in
	// line may end.
	for _, s := range hs {
		if s.Coordinating() {
			s.Release(context.Background())
		}
	}
	kv, _, err := hs[0].Client.KV().Get(CoordKey(hs[0].Prefix, hs[0].Service), nil)
	if err != nil || kv == nil || kv.Session == "" {
		t.Fatalf("coordinator's key after its host left the line: %+v, %v", kv, err)
	}
}

// A host in line that takes the coordinator's lock with its place in
// line, and cannot hand it to a coordinator's session (Consul does not
// answer the session's creation, or the move, nor the release after),
// must not keep it on its place in line, which lives as long as it
// waits: nobody would coordinate, every host seeing the lock held. So
// too when the lock is taken and the answer lost.
func TestElectionRecoversALockLeftOnALineSession(t *testing.T) {
	for _, fail := range []string{"/v1/session/create", "/v1/txn", "acquire"} {
		t.Run(strings.Trim(fail, "/"), func(t *testing.T) {
			s := hosts(t, 1, 1)[0]
			path := "/v1/kv/" + CoordKey(s.Prefix, s.Service)
			var armed atomic.Bool
			var failed atomic.Int64
			injected := errors.New("injected: Consul does not answer")
			c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
				switch {
				case r.URL.Path == path && r.URL.Query().Has("acquire"):
					resp, err := http.DefaultTransport.RoundTrip(r)
					if fail == "acquire" && failed.Load() == 0 && err == nil {
						// Taken, and the answer lost: nothing to give back
						// as far as the host knows.
						resp.Body.Close()
						failed.Add(2)
						return nil, injected
					}
					armed.Store(true)
					return resp, err
				case armed.Load() && failed.Load() == 0 && strings.HasPrefix(r.URL.Path, fail),
					armed.Load() && failed.Load() == 1 && r.URL.Path == path && r.URL.Query().Has("release"):
					failed.Add(1)
					return nil, injected
				}
				return http.DefaultTransport.RoundTrip(r)
			})}})
			if err != nil {
				t.Fatal(err)
			}
			s.Client = c
			ctx, cancel := context.WithTimeout(context.Background(), s.TTL+5*time.Second)
			defer cancel()
			if _, err := s.Acquire(ctx); err != nil {
				t.Fatalf("not granted within the TTL and 5s (%d requests failed): %v", failed.Load(), err)
			}
			defer s.Release(context.Background())
			if failed.Load() != 2 {
				t.Fatalf("%d requests failed; want 2", failed.Load())
			}
			kv, _, err := client(t).KV().Get(CoordKey(s.Prefix, s.Service), nil)
			if err != nil || kv == nil || kv.Session == "" || kv.Session == s.held.id {
				t.Fatalf("coordinator's key: %+v, %v; want held by a coordinator's session", kv, err)
			}
		})
	}
}

// The place in line that took the coordinator's lock ends before the
// lock moves to the coordinator's session (the host's update is done and
// it leaves the line, or its process is killed): the lock goes with it,
// and another host in line coordinates and is granted, within the time
// Consul takes to end a session (up to twice its TTL) and a few seconds.
func TestElectionLineSessionEndsBeforeTheMove(t *testing.T) {
	for _, kill := range []bool{false, true} {
		t.Run(fmt.Sprintf("kill=%v", kill), func(t *testing.T) {
			hs := hosts(t, 2, 1)
			inLine(t, hs[:1])
			a, b := hs[0], hs[1]
			var once sync.Once
			var dead atomic.Bool
			c, err := api.NewClient(&api.Config{Address: server.Addr, HttpClient: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
				if dead.Load() {
					return nil, errors.New("injected: the process is gone")
				}
				if strings.HasPrefix(r.URL.Path, "/v1/session/create") {
					stop := false
					once.Do(func() {
						stop = true
						if kill {
							a.Kill()
							dead.Store(true)
						} else {
							a.Release(context.Background())
						}
					})
					if stop && kill {
						return nil, errors.New("injected: the process is gone")
					}
				}
				return http.DefaultTransport.RoundTrip(r)
			})}})
			if err != nil {
				t.Fatal(err)
			}
			a.Client = c
			a.startCoordinator()
			if a.Coordinating() {
				t.Fatal("a host whose place in line ended before the move coordinates")
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 2*b.TTL+5*time.Second)
			defer cancel()
			if _, err := b.Acquire(ctx); err != nil {
				t.Fatalf("the other host in line: %v", err)
			}
			defer b.Release(context.Background())
			if !b.Coordinating() {
				t.Fatal("the other host is granted but does not coordinate")
			}
			t.Logf("granted %v after the election broke off", time.Since(start).Round(time.Millisecond))
		})
	}
}

// Sessions created together (a fleet getting in line at a release) are
// first renewed at moments spread over a quarter of their TTL, not in
// the same instant, and never before a quarter of it.
func TestSessionsCreatedTogetherRenewApart(t *testing.T) {
	t.Parallel()
	c := client(t)
	const ttl = 10 * time.Second // Consul's least
	created := time.Now()
	var ses []*session
	for i := range 8 {
		se, err := newSession(context.Background(), c, fmt.Sprintf("dropship %s-%d", t.Name(), i), ttl, api.SessionBehaviorDelete)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { se.end(c) })
		ses = append(ses, se)
	}
	first := make([]time.Time, len(ses))
	testutil.Eventually(t, 60*time.Second, func() error {
		for i, se := range ses {
			se.mu.Lock()
			r := se.renewed
			se.mu.Unlock()
			if !r.After(created.Add(time.Second)) {
				return fmt.Errorf("session %d not renewed yet", i)
			}
			first[i] = r
		}
		return nil
	})
	lo, hi := first[0], first[0]
	for _, r := range first {
		if r.Sub(created) < ttl/4 {
			t.Errorf("a session renewed %v after its creation, before a quarter of its TTL", r.Sub(created))
		}
		if r.Before(lo) {
			lo = r
		}
		if r.After(hi) {
			hi = r
		}
	}
	if hi.Sub(lo) < 200*time.Millisecond {
		t.Fatalf("8 sessions created together were first renewed within %v of each other", hi.Sub(lo))
	}
}

// A host in line looks for the coordinator after d to 1.5 d, at random:
// hosts that got in line together look apart.
func TestInLineCheckSpreads(t *testing.T) {
	const d = 10 * time.Second
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range 200 {
		c := inLineCheck(d)
		if c < d || c >= d+d/2 {
			t.Fatalf("inLineCheck(%v) = %v, outside [d, 1.5 d)", d, c)
		}
		lo, hi = min(lo, c), max(hi, c)
	}
	if hi-lo < d/4 {
		t.Fatalf("200 checks all within %v of each other", hi-lo)
	}
}
