package consul

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
)

// planner is a rollout whose waves the test opens: host-00 in wave a,
// the others in wave b.
type planner struct {
	mu    sync.Mutex
	open  map[string]bool
	stop  map[string]bool // closed, and not opening by itself
	calls int
}

func (p *planner) Plan(_ context.Context, sum string) (lock.Rollout, map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	doc := lock.Rollout{Checksum: sum}
	for _, w := range []string{"a", "b"} {
		ws := lock.WaveState{Name: w, Open: p.open[w], Queue: !p.open[w] && !p.stop[w]}
		if !ws.Open {
			ws.Reason = "closed by the test"
		}
		doc.Waves = append(doc.Waves, ws)
	}
	waves := map[string]string{}
	for i := range 4 {
		waves[node(i)] = "b"
	}
	waves[node(0)] = "a"
	return doc, waves, nil
}

func (p *planner) set(wave string, open bool) {
	p.mu.Lock()
	p.open[wave] = open
	p.mu.Unlock()
}

func node(i int) string { return []string{"host-00", "host-01", "host-02", "host-03"}[i] }

// The coordinator places each host in its wave and writes one document;
// a host that waits in line for a release is granted only once its wave
// opens; a wave that no longer opens by itself (an approval, say) ends
// the wait.
func TestRolloutGrantsOnlyOpenWaves(t *testing.T) {
	hs := hosts(t, 4, 2)
	p := &planner{open: map[string]bool{"a": true}, stop: map[string]bool{}}
	for _, h := range hs {
		h.SetPlanner(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var doc *lock.Rollout
	var wave string
	testutil.Eventually(t, 20*time.Second, func() error {
		var err error
		if doc, wave, err = hs[1].Rollout(ctx, "sum1"); err == nil && wave == "" {
			err = errors.New("host-01 not placed in a wave of sum1")
		}
		return err
	})
	if wave != "b" || doc.Wave("b") == nil || doc.Wave("b").Open || !doc.Wave("b").Queue || doc.Wave("a") == nil || !doc.Wave("a").Open {
		t.Fatalf("host-01: wave %q of %+v", wave, doc)
	}
	// host-01 asks for a slot while its wave is closed: no grant.
	hs[1].Want("sum1")
	got := make(chan error, 1)
	go func() {
		_, err := hs[1].Acquire(ctx)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("host-01 granted while wave b is closed (err %v)", err)
	case <-time.After(2 * time.Second):
	}
	// host-00's wave is open.
	hs[0].Want("sum1")
	if _, err := hs[0].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	hs[0].Release(ctx)
	p.set("b", true)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	hs[1].Release(ctx)
	testutil.Eventually(t, 10*time.Second, func() error {
		d, _, err := hs[2].WaitRollout(ctx, 0)
		if err == nil && (d == nil || !d.Wave("b").Open) {
			err = errors.New("the document does not say wave b is open")
		}
		return err
	})
	// A wave closed that does not open by itself ends the wait in line.
	p.set("b", false)
	p.mu.Lock()
	p.stop["b"] = true
	p.mu.Unlock()
	testutil.Eventually(t, 20*time.Second, func() error {
		d, _, err := hs[2].Rollout(ctx, "sum1")
		if err == nil && (d == nil || d.Wave("b").Open || d.Wave("b").Queue) {
			err = errors.New("the document does not say wave b stopped")
		}
		return err
	})
	hs[2].Want("sum1")
	if _, err := hs[2].Acquire(ctx); !errors.Is(err, lock.ErrMoved) {
		t.Fatalf("host-02 waited for a wave that stopped: %v", err)
	}
	// A slot outside the rollout (a revert) waits for no wave.
	hs[3].Want("")
	if _, err := hs[3].Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	hs[3].Release(ctx)
}
