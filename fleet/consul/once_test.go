package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
)

// Hosts at once: one runs the hook, the others wait for its success.
func TestRunOnceRunsOnOneHost(t *testing.T) {
	ctx := context.Background()
	var runs atomic.Int32
	var wg sync.WaitGroup
	ran := make(chan string, 6)
	for h := range 6 {
		p := newFleet(t, fmt.Sprintf("host-%d", h))
		wg.Go(func() {
			rec, here, err := p.RunOnce(ctx, "app", "sum1", "before-1", func(context.Context, string) error {
				runs.Add(1)
				time.Sleep(300 * time.Millisecond)
				return nil
			})
			if err != nil || rec.Result != fleet.OnceSuccess {
				t.Errorf("%s: %+v, %v", p.Node, rec, err)
			}
			if here {
				ran <- p.Node
			}
		})
	}
	wg.Wait()
	close(ran)
	if runs.Load() != 1 || len(ran) != 1 {
		t.Fatalf("the hook ran %d times", runs.Load())
	}
	recs, err := newFleet(t, "reader").OnceRecords(ctx, "app")
	if err != nil || len(recs) != 1 || recs[0].Node != <-ran || recs[0].Runs != 1 || len(recs[0].RunID) != 16 {
		t.Fatalf("records %+v, %v", recs, err)
	}
}

// A runner that stops mid-hook lets the next host run it again, with the
// same run id; a failure is every host's.
func TestRunOnceRunsAgainAfterItsHostStops(t *testing.T) {
	ctx := context.Background()
	a, b, c := newFleet(t, "a"), newFleet(t, "b"), newFleet(t, "c")
	actx, stop := context.WithCancel(ctx)
	started := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		_, _, err := a.RunOnce(actx, "app", "sum2", "before-1", func(ctx context.Context, id string) error {
			started <- id
			<-ctx.Done()
			return ctx.Err()
		})
		done <- err
	}()
	first := <-started
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the stopped runner: %v", err)
	}
	rec, here, err := b.RunOnce(ctx, "app", "sum2", "before-1", func(_ context.Context, id string) error {
		if id != first {
			return fmt.Errorf("run id %s, want %s", id, first)
		}
		return nil
	})
	if err != nil || !here || rec.Runs != 2 || rec.RunID != first {
		t.Fatalf("the second run: %+v here=%v %v", rec, here, err)
	}
	if _, here, err := c.RunOnce(ctx, "app", "sum2", "before-1", nil); err != nil || here {
		t.Fatalf("a third host: here=%v %v", here, err)
	}

	_, _, err = a.RunOnce(ctx, "app", "sum3", "after-1", func(context.Context, string) error { return errors.New("migration failed") })
	if err == nil {
		t.Fatal("the failure was not returned")
	}
	_, here, err = b.RunOnce(ctx, "app", "sum3", "after-1", nil)
	if here || err == nil || !strings.Contains(err.Error(), "migration failed") || !strings.Contains(err.Error(), "on a") {
		t.Fatalf("a host after the failure: here=%v %v", here, err)
	}
}
