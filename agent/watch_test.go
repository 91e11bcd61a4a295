package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
)

// health is a health endpoint a test can fail on demand, or one request
// in every.
type health struct {
	down     atomic.Bool
	every    int64 // 0 for never
	calls    atomic.Int64
	failures atomic.Int64
	lastFail atomic.Int64 // unix nanoseconds of the last failed answer
}

func (h *health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	n := h.calls.Add(1)
	if h.down.Load() || (h.every > 0 && n%h.every == 0) {
		h.failures.Add(1)
		h.lastFail.Store(time.Now().UnixNano())
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok"))
}

// watchedRunner installs v1 without a watch and returns a runner of the
// same host whose http check on h watches for window.
func watchedRunner(t testing.TB, e *env, h *health, window, extra string) *agent.Runner {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e.publish("v1")
	e.check(e.runner(e.config("")), agent.ResultInstalled)
	return e.runner(e.config(fmt.Sprintf(`check "http" {
    url            = "%s/health"
    interval       = "20ms"
    retries        = 2
    watch          = %q
    watch_interval = "20ms"
    %s
  }`, srv.URL, window, extra)))
}

// A release that passes its checks at the switch and fails during the
// watch is rolled back, as a failed check is: the update fails in check.
func TestWatchRollsBackALateFailure(t *testing.T) {
	e := newEnv(t)
	h := &health{}
	r := watchedRunner(t, e, h, "10m", "")
	e.publish("v2")
	done := make(chan agent.Outcome, 1)
	go func() { done <- r.Check(context.Background()) }()
	waitFor(t, func() bool { return !r.Status().WatchUntil.IsZero() && e.current() == "v2" })
	down := time.Now()
	h.down.Store(true)
	var out agent.Outcome
	select {
	case out = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the failing release was not rolled back")
	}
	t.Logf("back on v1 %s after the endpoint went down (2 attempts 20ms apart, a probe every 20ms)",
		time.Since(down).Round(time.Millisecond))
	if out.Result != agent.ResultFailed || out.Phase != agent.PhaseCheck || !strings.Contains(out.Err.Error(), "watch") {
		t.Fatalf("outcome %s in %s: %v", out.Result, out.Phase, out.Err)
	}
	if e.current() != "v1" {
		t.Fatalf("running %q after the watch failed, want v1", e.current())
	}
	if st := e.state_(r); st.Failures[out.Checksum] == nil {
		t.Fatal("the failure is not recorded")
	}
}

// A probe failing one request in a hundred is not a rollback: each probe
// has two attempts.
func TestWatchToleratesAFlakyProbe(t *testing.T) {
	e := newEnv(t)
	h := &health{every: 100}
	r := watchedRunner(t, e, h, "4s", "")
	e.publish("v2")
	out := e.check(r, agent.ResultInstalled)
	if e.current() != "v2" || h.failures.Load() == 0 {
		t.Fatalf("running %q, %d of %d requests failed (want some)", e.current(), h.failures.Load(), h.calls.Load())
	}
	t.Logf("%d requests, %d failed, no rollback (%s)", h.calls.Load(), h.failures.Load(), out.Duration.Round(time.Millisecond))
}

// BenchmarkWatchRollback measures, for a release whose health fails
// during its watch, the time from the failed probe (its last attempt's
// answer) to the host back on the previous release, its state saved.
func BenchmarkWatchRollback(b *testing.B) {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnv(b)
		h := &health{}
		r := watchedRunner(b, e, h, "10m", "")
		e.publish("v2")
		done := make(chan agent.Outcome, 1)
		go func() { done <- r.Check(context.Background()) }()
		for r.Status().WatchUntil.IsZero() {
			time.Sleep(time.Millisecond)
		}
		h.down.Store(true)
		out := <-done
		back := time.Now()
		if out.Result != agent.ResultFailed || e.current() != "v1" {
			b.Fatalf("%s, running %q", out.Result, e.current())
		}
		total += back.Sub(time.Unix(0, h.lastFail.Load()))
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms-probe-to-previous")
}

// BenchmarkWatchFlakyTwoMinutes watches for two minutes a release whose
// health endpoint fails one request in a hundred, a probe every 20 ms
// with two attempts: it reports the rollbacks (want 0) and the failed
// requests absorbed.
func BenchmarkWatchFlakyTwoMinutes(b *testing.B) {
	rollbacks := 0
	var failed int64
	for i := 0; i < b.N; i++ {
		e := newEnv(b)
		h := &health{every: 100}
		r := watchedRunner(b, e, h, "2m", "")
		e.publish("v2")
		if out := r.Check(context.Background()); out.Result != agent.ResultInstalled {
			rollbacks++
		}
		failed += h.failures.Load()
	}
	b.ReportMetric(float64(rollbacks)/float64(b.N), "rollbacks/op")
	b.ReportMetric(float64(failed)/float64(b.N), "failed-requests/op")
}

// A watch whose check failed, with on_failure = "continue", keeps the
// release but is no watch served: the host does not report having
// watched (a wave of such hosts has not served a bake), while a clean
// watch reports its window.
func TestWatchThatFailedDoesNotCountAsWatched(t *testing.T) {
	for _, c := range []struct {
		name string
		h    *health
		want time.Duration
	}{{"failing", &health{every: 1}, 0}, {"healthy", &health{}, time.Second}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			r := watchedRunner(t, e, c.h, "1s", `on_failure = "continue"`)
			e.publish("v2")
			out := e.check(r, agent.ResultInstalled)
			if e.current() != "v2" || out.Watched != c.want {
				t.Fatalf("running %q, watched %v, want v2 and %v (%d of %d probes failed)", e.current(), out.Watched, c.want,
					c.h.failures.Load(), c.h.calls.Load())
			}
		})
	}
}
