package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// Free memory goes back to the system at a tick while the agent idles,
// never in the middle of an update. The ticks are the test's: each send
// returns once the loop has taken it, so what the previous tick did is
// done by then.
func TestTrimWhileIdle(t *testing.T) {
	tick := make(chan time.Time)
	freed := make(chan struct{}, 8)
	var busy atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		trimWhileIdle(ctx, tick, func() bool { return !busy.Load() }, func() { freed <- struct{}{} })
		close(done)
	}()
	wantFreed := func(when string) {
		t.Helper()
		select {
		case <-freed:
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing given back %s", when)
		}
	}

	tick <- time.Now()
	wantFreed("while idle")

	busy.Store(true)
	tick <- time.Now()
	tick <- time.Now() // taken once the first tick of the update is handled
	select {
	case <-freed:
		t.Fatal("memory given back during an update")
	default:
	}

	busy.Store(false)
	tick <- time.Now()
	wantFreed("once the update ended")

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("trimWhileIdle did not stop with its context")
	}
}
