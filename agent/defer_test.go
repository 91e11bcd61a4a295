package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
)

// recordingFleet is a fleet in memory that keeps what a host told it: its
// node records, its audit events and any breaker it tripped.
type recordingFleet struct {
	fakeFleet
	events []fleet.Event
	trips  []fleet.Breaker
}

func (f *recordingFleet) Blocked(context.Context, string, string) (string, error) { return "", nil }

func (f *recordingFleet) Trip(_ context.Context, _ string, b fleet.Breaker) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.trips = append(f.trips, b)
	return nil
}

func (f *recordingFleet) Record(_ context.Context, _ string, ev fleet.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	return nil
}

func (f *recordingFleet) Semaphore(string, int) (fleet.Semaphore, error) { return &countingSem{}, nil }

// countingSem counts the slots taken; the agent's goroutine takes them
// while the test reads the count.
type countingSem struct{ taken atomic.Int32 }

func (s *countingSem) Acquire(context.Context) (<-chan struct{}, error) {
	s.taken.Add(1)
	return make(chan struct{}), nil
}
func (s *countingSem) Release(context.Context) error { return nil }

// deferConfig loads a sequential service in ff whose body is extra.
func (e *env) deferConfig(ff fleet.Fleet, extra string) *agent.Config {
	e.t.Helper()
	return e.deferConfigArtifact(ff, "", extra)
}

// deferConfigArtifact is deferConfig with artifactKeys in the artifact
// block.
func (e *env) deferConfigArtifact(ff fleet.Fleet, artifactKeys, extra string) *agent.Config {
	e.t.Helper()
	reg := registry()
	reg.Fleets = map[string]fleet.Factory{"consul": func(string, hcl.Body, fleet.Env) (fleet.Agent, hcl.Diagnostics) { return ff, nil }}
	src := fmt.Sprintf(`
state_path = %q
node_name  = "test-node"
lock "consul" {}
service "app" {
  check_interval = "1s"
  sequential     = true
  artifact "file" {
    path        = %q
    destination = %q
    %s
  }
  %s
}
`, e.state, e.store, e.dest, artifactKeys, extra)
	path := filepath.Join(e.dir, "defer.hcl")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cfg, diags := agent.Load(path, reg, slog.New(slog.DiscardHandler))
	if diags.HasErrors() {
		e.t.Fatalf("config: %v", diags)
	}
	return cfg
}

// holdLock takes the lock file as the application would (flock), and
// returns what lets it go.
func holdLock(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { f.Close() }) }
	t.Cleanup(release)
	return release
}

// A held lock file defers the update: no slot is taken, the host says
// "deferred" with the reason (status, node record, audit log), and once
// the application lets go the running agent installs the release.
func TestHeldLockFileDefersTheUpdate(t *testing.T) {
	e := newEnv(t)
	lock := filepath.Join(e.dir, "busy.lock")
	ff := &recordingFleet{}
	cfg := e.deferConfig(ff, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock))
	r := e.runner(cfg)
	e.publish("v1")
	e.check(r, agent.ResultInstalled)

	release := holdLock(t, lock)
	e.publish("v2")
	sem := r.SemaphoreForTest().(*countingSem)
	taken := sem.taken.Load()
	out := e.check(r, agent.ResultDeferred)
	if !strings.Contains(out.Reason, lock) || e.current() != "v1" {
		t.Fatalf("deferred: reason %q, running %q", out.Reason, e.current())
	}
	if sem.taken.Load() != taken {
		t.Fatal("a deferring host took a fleet slot")
	}
	if st := r.Status(); !strings.Contains(st.Deferred, lock) || st.DeferredSince.IsZero() {
		t.Fatalf("status does not say deferred: %+v", st)
	}
	e.check(r, agent.ResultDeferred) // told once, not at every look
	ff.mu.Lock()
	var deferEvents int
	for _, ev := range ff.events {
		if ev.Kind == fleet.EventDefer {
			deferEvents++
		}
	}
	node := ff.st.Nodes[len(ff.st.Nodes)-1]
	ff.mu.Unlock()
	if node.Result != "deferred" || node.Attempt != out.Checksum || !strings.Contains(node.Reason, lock) || deferEvents != 1 {
		t.Fatalf("node record %+v, %d defer events", node, deferEvents)
	}

	// The agent, running, looks again every interval.
	srv := agent.NewServer("test")
	a, err := agent.New(cfg, srv, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv.SetAgent(a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, func() bool { return a.Runners()[0].Status().Deferred != "" })
	// The status endpoint and the metrics say so.
	get := func(url string) string {
		rec := httptest.NewRecorder()
		srv.Handler(agent.Access{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, url, nil))
		return rec.Body.String()
	}
	if body := get("/v1/status"); !strings.Contains(body, `"deferred":"the application holds `) || !strings.Contains(body, `"deferred_since":`) {
		t.Fatalf("/v1/status: %s", body)
	}
	if body := get("/metrics"); !strings.Contains(body, `dropship_update_deferred{service="app"} 1`) ||
		!strings.Contains(body, `dropship_checks_total{result="deferred",service="app"}`) {
		t.Fatalf("/metrics:\n%s", body)
	}
	released := time.Now()
	release()
	waitFor(t, func() bool { return e.current() == "v2" })
	t.Logf("installed %s after the lock was released (interval 100ms)", time.Since(released).Round(time.Millisecond))
	if sem := a.Runners()[0].SemaphoreForTest().(*countingSem); sem.taken.Load() != 1 {
		t.Fatalf("the running agent took %d slots, want 1", sem.taken.Load())
	}
	waitFor(t, func() bool { return a.Runners()[0].Status().Deferred == "" })
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if len(ff.trips) != 0 {
		t.Fatalf("deferring tripped the breaker: %+v", ff.trips)
	}
}

// After max_defer, the update proceeds or fails, as on_max_defer says; a
// failure is the host's, not the release's: no breaker.
func TestMaxDeferPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy string
		want   agent.Result
		runs   string
	}{
		{"proceed", agent.ResultInstalled, "v2"},
		{"fail", agent.ResultFailed, "v1"},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			e := newEnv(t)
			ff := &recordingFleet{}
			r := e.runner(e.deferConfig(ff, fmt.Sprintf(`defer {
    command      = "test ! -f %s/busy || exit 75"
    interval     = "50ms"
    max_defer    = "300ms"
    on_max_defer = %q
  }`, e.dir, tc.policy)))
			e.publish("v1")
			e.check(r, agent.ResultInstalled)
			os.WriteFile(filepath.Join(e.dir, "busy"), nil, 0o644)
			e.publish("v2")
			first := e.check(r, agent.ResultDeferred)
			if !strings.Contains(first.Reason, "exited 75") {
				t.Fatalf("reason %q", first.Reason)
			}
			deadline := time.Now().Add(30 * time.Second)
			var out agent.Outcome
			for {
				out = r.Check(context.Background())
				if out.Result != agent.ResultDeferred || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if out.Result != tc.want || e.current() != tc.runs {
				t.Fatalf("after max_defer: %s (%v), running %q; want %s on %s", out.Result, out.Err, e.current(), tc.want, tc.runs)
			}
			if tc.policy == "fail" {
				if out.Phase != agent.PhaseDefer || !strings.Contains(out.Err.Error(), "max_defer") {
					t.Fatalf("failure: phase %s, %v", out.Phase, out.Err)
				}
				// Tried again after the failure back-off, not at once.
				if again := e.check(r, agent.ResultSkipped); !strings.Contains(again.Reason, "next try after") {
					t.Fatalf("after the failure: %q", again.Reason)
				}
			}
			ff.mu.Lock()
			defer ff.mu.Unlock()
			if len(ff.trips) != 0 {
				t.Fatalf("max_defer tripped the breaker: %+v", ff.trips)
			}
		})
	}
}

// A defer command exiting neither 0 nor 75 stops the check with an
// error, not a deferral and not an update.
func TestDeferCommandErrorIsNotAnUpdate(t *testing.T) {
	e := newEnv(t)
	r := e.runner(e.deferConfig(&recordingFleet{}, `defer { command = "exit 3" }`))
	e.publish("v1")
	out := e.check(r, agent.ResultError)
	if out.Phase != agent.PhaseDefer || !strings.Contains(out.Err.Error(), "status 3") || e.current() != "" {
		t.Fatalf("phase %s, %v, running %q", out.Phase, out.Err, e.current())
	}
}

// A release withdrawn while the application defers it: the host's record
// no longer says deferred.
func TestWithdrawnReleaseEndsTheDeferral(t *testing.T) {
	e := newEnv(t)
	ff := &recordingFleet{}
	r := e.runner(e.deferConfig(ff, fmt.Sprintf(`defer { command = "test ! -f %s/busy || exit 75" }`, e.dir)))
	e.publish("v1")
	v1, _ := os.ReadFile(e.store)
	e.check(r, agent.ResultInstalled)
	os.WriteFile(filepath.Join(e.dir, "busy"), nil, 0o644)
	e.publish("v2")
	e.check(r, agent.ResultDeferred)
	os.WriteFile(e.store, v1, 0o644) // v1's bytes again: nothing to install
	e.check(r, agent.ResultNoop)
	ff.mu.Lock()
	defer ff.mu.Unlock()
	if n := ff.st.Nodes[len(ff.st.Nodes)-1]; n.Result == "deferred" || n.Reason != "" {
		t.Fatalf("the record still says deferred: %+v", n)
	}
	if r.Status().Deferred != "" {
		t.Fatalf("the status still says deferred: %+v", r.Status())
	}
}
