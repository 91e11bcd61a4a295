package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/lock"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// `agent --once` from cron with a rollout block: the first run registers
// the host and installs; a second run, with a new release, installs it.
func TestAgentOnceWithRolloutInstalls(t *testing.T) {
	t.Parallel()
	f, h, _ := oneHostRollout(t)
	for _, v := range []string{"v1", "v2"} {
		if out := f.onceInstalls(t, h, v, ""); !strings.Contains(out, "msg=installed") {
			t.Errorf("agent --once did not log the install of %s:\n%s", v, out)
		}
	}
	// The state says what the runs did.
	if _, err := os.Stat(filepath.Join(f.dir, h.name, "state", "app")); err != nil {
		t.Fatal(err)
	}
}

// `agent --once` of a fleet that shrank since its last release (the
// document says far more hosts than run): the host is not of the pick
// that asks for a release at once, and a run from cron has no later in
// which to ask (an agent that runs on asks at a later look, once moved
// out of line): it asks at once all the same, and installs.
func TestAgentOnceAsksForTheReleaseOfAShrunkFleet(t *testing.T) {
	t.Parallel()
	f, h, c := oneHostRollout(t)
	f.onceInstalls(t, h, "v1", "")
	cl, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	key := lockconsul.RolloutKey(f.prefix, "app")
	kv, _, err := cl.KV().Get(key, nil)
	if err != nil || kv == nil {
		t.Fatalf("the document of v1: %v %v", kv, err)
	}
	var doc lock.Rollout
	if err := json.Unmarshal(kv.Value, &doc); err != nil || len(doc.Waves) == 0 {
		t.Fatalf("the document of v1: %s %v", kv.Value, err)
	}
	doc.Waves[0].Hosts, doc.Waves[0].Done = 1<<40, 1<<40
	b, _ := json.Marshal(doc)
	if _, err := cl.KV().Put(&api.KVPair{Key: key, Value: b}, nil); err != nil {
		t.Fatal(err)
	}
	out := f.onceInstalls(t, h, "v2", ", the fleet of the document before shrunk to this host")
	if strings.Contains(out, "none of the hosts that ask at once did") {
		t.Fatalf("agent --once asked for v2 only at a later look, as an agent that runs on would:\n%s", out)
	}
}

// oneHostRollout is a fleet of one host, with a rollout of one wave, and
// its Consul.
func oneHostRollout(t *testing.T) (*fleetRig, *host, *rig.Consul) {
	t.Helper()
	c := consulServer(t)
	f := newFleet(t, 1, 1, c, `rollout {
    waves = ["100%"]
  }`)
	return f, f.hosts[0], c
}

// onceInstalls publishes v and runs `agent --once` on h, which must exit
// 0 with v installed (why says more of the run, for its failure); it
// returns what the run printed.
func (f *fleetRig) onceInstalls(t *testing.T, h *host, v, why string) string {
	t.Helper()
	f.publish(v, false)
	out, errOut, code := run(t, "agent", "--once", "-c", h.cfg)
	if code != 0 || h.version() != v {
		t.Fatalf("agent --once with %s%s: exit %d, host on %q\n%s%s", v, why, code, h.version(), out, errOut)
	}
	return errOut + out
}
