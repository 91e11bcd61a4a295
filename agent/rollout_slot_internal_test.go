package agent

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// canaryFirst is a rollout of any release: host-00 in wave canary, open;
// host-01 in wave rest, in line until the canary is done.
type canaryFirst struct{}

func (canaryFirst) Plan(_ context.Context, sum string) (lock.Rollout, map[string]string, error) {
	return lock.Rollout{Checksum: sum, Waves: []lock.WaveState{
		{Name: "canary", Hosts: 1, Open: true},
		{Name: "rest", Hosts: 1, Queue: true, Reason: "waiting for wave canary: 0 of 1 hosts done"},
	}}, map[string]string{"host-00": "canary", "host-01": "rest"}, nil
}

// A host granted a slot for one release, that finds a newer one
// published once it holds the slot, does not take its wave of the newer
// release as open because the document says it is in line: the
// coordinator's grants before the document are only for the release the
// host was in line for. Else a release published mid-rollout skips its
// canary on every host granted the one before.
func TestGrantForAnOlderReleaseOpensNoWaveInLine(t *testing.T) {
	srv, err := rig.StartConsul()
	testutil.RequireServer(t, "Consul", err)
	t.Cleanup(srv.Stop)
	c, err := api.NewClient(&api.Config{Address: srv.Addr})
	if err != nil {
		t.Fatal(err)
	}
	s := lockconsul.New(c, "test/"+testutil.Unique(t), "app", "host-01", 10*time.Second, 2)
	s.SetPlanner(canaryFirst{})
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testutil.Eventually(t, 20*time.Second, func() error {
		doc, wave, err := s.Rollout(ctx, "sumB")
		if err == nil && (doc == nil || doc.Checksum != "sumB" || wave != "rest") {
			err = errors.New("host-01 not placed in wave rest of sumB yet")
		}
		return err
	})
	r := &Runner{svc: &Service{Name: "app", Rollout: &rollout.Policy{}}, coord: s, now: time.Now, logger: slog.Default()}
	// Its slot was granted for sumA; the store has sumB now.
	r.granted, r.slotFor = true, "sumA"
	if out := r.coordGate(ctx, "sumB", false); out == nil || out.Result != ResultSkipped {
		t.Fatalf("a slot granted for sumA installs sumB in a wave in line: %+v", out)
	}
	// Granted for sumB itself: the coordinator grants a wave that opens
	// by itself before its document says so.
	r.slotFor = "sumB"
	if out := r.coordGate(ctx, "sumB", false); out != nil {
		t.Fatalf("a slot granted for sumB, its wave in line: %+v", out)
	}
}
