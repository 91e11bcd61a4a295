package check_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/check"
)

func load(t *testing.T, f hooks.Factory, src string) hooks.Hook {
	t.Helper()
	file, diags := hclparse.NewParser().ParseHCL([]byte(src), "t.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	h, diags := f("x", file.Body, hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return h
}

func TestHTTPCheckRetriesUntilHealthy(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(503)
			return
		}
		w.Write([]byte(`{"status":"ok"}`))
	}))
	defer srv.Close()
	h := load(t, check.HTTPFactory, `url = "`+srv.URL+`/health"
interval = "10ms"
retries = 5
body_contains = "ok"`)
	if err := h.Run(context.Background(), hooks.Event{}); err != nil || calls.Load() != 3 {
		t.Fatalf("err %v after %d calls", err, calls.Load())
	}
}

func TestHTTPCheckGivesUp(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(500)
	}))
	defer srv.Close()
	h := load(t, check.HTTPFactory, `url = "`+srv.URL+`"
interval = "5ms"
retries = 4`)
	err := h.Run(context.Background(), hooks.Event{})
	if err == nil || !strings.Contains(err.Error(), "failed 4 of 4") || !strings.Contains(err.Error(), "status 500") || calls.Load() != 4 {
		t.Fatalf("err %v after %d calls", err, calls.Load())
	}
}

// Not parallel: the closed port must stay closed, and a server of a test
// running beside it could take it.
func TestTCPCheck(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	h := load(t, check.TCPFactory, `address = "`+addr+`"
retries = 1`)
	if err := h.Run(context.Background(), hooks.Event{}); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := h.Run(context.Background(), hooks.Event{}); err == nil {
		t.Fatal("closed port passed")
	}
}

func TestScriptCheckTimeoutPerAttempt(t *testing.T) {
	t.Parallel()
	h := load(t, check.ScriptFactory, `command = "sleep 5"
timeout = "100ms"
retries = 2
interval = "10ms"`)
	err := h.Run(context.Background(), hooks.Event{})
	if err == nil || !strings.Contains(err.Error(), "failed 2 of 2") {
		t.Fatalf("err %v", err)
	}
}

func TestStartPeriodThenPass(t *testing.T) {
	t.Parallel()
	h := load(t, check.ScriptFactory, `command = "true"
start_period = "10ms"`)
	if err := h.Run(context.Background(), hooks.Event{}); err != nil {
		t.Fatal(err)
	}
}

// probeFunc is a probe a test scripts.
type probeFunc func() error

func (f probeFunc) Run(context.Context, hooks.Event) error { return f() }

// Watch fails at the failures-th failed probe, not before; a probe fails
// only when all its attempts do.
func TestWatchCountsFailedProbes(t *testing.T) {
	var n atomic.Int32
	// Attempts alternate: probes of 1 attempt fail every other time.
	flaky := probeFunc(func() error {
		if n.Add(1)%2 == 0 {
			return errors.New("down")
		}
		return nil
	})
	r := &check.Retry{Probe: flaky, Retries: 1, Timeout: time.Second, Window: time.Hour, WatchInterval: time.Millisecond, Failures: 3}
	var seen []int
	err := r.Watch(context.Background(), hooks.Event{}, func(k int, _ error) { seen = append(seen, k) })
	if err == nil || !strings.Contains(err.Error(), "3 of 6 probes failed") || len(seen) != 3 {
		t.Fatalf("err %v, failed probes seen %v", err, seen)
	}
	// Two attempts a probe: never two failures in a row, so no failed probe.
	n.Store(0)
	r.Retries, r.Interval, r.Failures, r.Window = 2, time.Millisecond, 1, 200*time.Millisecond
	if err := r.Watch(context.Background(), hooks.Event{}, nil); err != nil {
		t.Fatalf("with retries = 2: %v", err)
	}
	if n.Load() < 10 {
		t.Fatalf("only %d attempts in the window", n.Load())
	}
}
