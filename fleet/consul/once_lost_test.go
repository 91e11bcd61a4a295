package consul

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// A runner that is alive but has lost its session (its link to Consul
// stalled past the TTL, or the session was destroyed) stops its hook
// before another host can take the lock and run it again: a migration
// never runs on two hosts at once.
func TestRunOnceLostSessionStopsTheHookBeforeAnotherRuns(t *testing.T) {
	ctx := context.Background()
	a, b := newFleet(t, "a"), newFleet(t, "b")
	started := make(chan struct{})
	var aRunning atomic.Bool
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	done := make(chan error, 1)
	go func() {
		_, _, err := a.RunOnce(ctx, "app", "sum4", "before-1", func(ctx context.Context, _ string) error {
			aRunning.Store(true)
			defer aRunning.Store(false)
			close(started)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-release:
				return nil
			}
		})
		done <- err
	}()
	<-started
	// a's session, gone as if Consul had expired it.
	sessions, _, err := a.Client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	destroyed := 0
	for _, s := range sessions {
		if s.Name == "dropship once a app" {
			if _, err := a.Client.Session().Destroy(s.ID, nil); err != nil {
				t.Fatal(err)
			}
			destroyed++
		}
	}
	if destroyed != 1 {
		t.Fatalf("found %d sessions of a's run", destroyed)
	}
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	rec, here, err := b.RunOnce(bctx, "app", "sum4", "before-1", func(context.Context, string) error {
		if aRunning.Load() {
			return errors.New("a still runs the hook")
		}
		return nil
	})
	if err != nil || !here || rec.Result != fleet.OnceSuccess || rec.Runs != 2 {
		t.Fatalf("the run after a lost its session: %+v here=%v %v", rec, here, err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "lost") {
			t.Fatalf("a's run: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a's run did not end")
	}
}
