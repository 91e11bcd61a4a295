package agent

import (
	"context"
	"testing"
	"time"
)

// Free memory goes back to the system while the agent idles, never in
// the middle of an update. The test drives the ticker: a tick sent on the
// unbuffered channel is taken only once the tick before it is handled.
func TestTrimWhileIdle(t *testing.T) {
	freed := make(chan struct{}, 10)
	tick := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { trimWhileIdle(ctx, tick, func() { freed <- struct{}{} }); close(done) }()
	waitFreed := func(why string) {
		t.Helper()
		select {
		case <-freed:
		case <-time.After(10 * time.Second):
			t.Fatalf("nothing given back %s", why)
		}
	}

	tick <- time.Now()
	waitFreed("while idle")

	updating.Add(1)
	tick <- time.Now()
	tick <- time.Now() // the first tick of the update is handled
	if n := len(freed); n != 0 {
		t.Errorf("%d trims during an update", n)
	}
	updating.Add(-1)
	tick <- time.Now() // the second one is handled too, during the update or after it
	for len(freed) > 0 {
		<-freed
	}
	tick <- time.Now()
	waitFreed("once the update is over")

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("trimWhileIdle did not stop with its context")
	}
}
