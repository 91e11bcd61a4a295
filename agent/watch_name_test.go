package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dropshipd/dropship/agent"
)

// With several watched checks, the failure names the check that failed,
// not the first watched.
func TestWatchFailureNamesItsCheck(t *testing.T) {
	e := newEnv(t)
	h := &health{}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	e.publish("v1")
	e.check(e.runner(e.config("")), agent.ResultInstalled)
	r := e.runner(e.config(fmt.Sprintf(`check "tcp" {
    address        = %q
    interval       = "20ms"
    watch          = "10m"
    watch_interval = "20ms"
  }
  check "http" {
    url            = "%s/health"
    interval       = "20ms"
    retries        = 2
    watch          = "10m"
    watch_interval = "20ms"
  }`, ln.Addr().String(), srv.URL)))
	e.publish("v2")
	done := make(chan agent.Outcome, 1)
	go func() { done <- r.Check(context.Background()) }()
	waitFor(t, func() bool { return !r.Status().WatchUntil.IsZero() && e.current() == "v2" })
	h.down.Store(true)
	var out agent.Outcome
	select {
	case out = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the failing release was not rolled back")
	}
	if out.Result != agent.ResultFailed || !strings.HasPrefix(out.Err.Error(), "http check") {
		t.Fatalf("outcome %s: %v", out.Result, out.Err)
	}
}
