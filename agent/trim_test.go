package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// Free memory goes back to the system while the agent idles, never in
// the middle of an update.
func TestTrimWhileIdle(t *testing.T) {
	var calls atomic.Int32

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { trimWhileIdle(ctx, 5*time.Millisecond, func() { calls.Add(1) }); close(done) }()

	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if calls.Load() < 2 {
		t.Fatal("nothing given back while idle")
	}

	updating.Add(1)
	time.Sleep(10 * time.Millisecond) // a tick that saw 0 may still be running
	before := calls.Load()
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load() - before; n != 0 {
		t.Errorf("%d trims during an update", n)
	}
	updating.Add(-1)

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("trimWhileIdle did not stop with its context")
	}
}
