package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// One compromised host, with the agent's token, takes the coordinator's
// role and writes a document whose wave is open while the operators
// froze the service, and grants the other host a slot: that host still
// reads the freeze itself, from the operators' record, and installs
// nothing.
func TestAgentTokenCannotLiftAFreezeThroughTheCoordinatorsDocument(t *testing.T) {
	t.Parallel()
	f := newACLFleet(t, "")
	h := f.hosts[0]
	if out, errOut, code := run(t, "fleet", "freeze", "app", "--reason", "incident", "-c", f.ops); code != 0 {
		t.Fatalf("freeze: exit %d\n%s%s", code, out, errOut)
	}
	sum := f.publish("v1", false)
	f.forgeOpenWave(sum)
	log := f.once()
	if v := h.version(); v != "" {
		t.Fatalf("a document written with an agent's token lifted the operators' freeze: the host installed %s\n%s", v, log)
	}
	if !strings.Contains(log, "frozen by") {
		t.Fatalf("the host does not say it is frozen:\n%s", log)
	}
}

// The same forged document does not open a wave outside the host's own
// deploy window either: the window is in the host's config.
func TestAgentTokenCannotOpenAWaveOutsideTheWindow(t *testing.T) {
	t.Parallel()
	f := newACLFleet(t, "")
	h := f.hosts[0]
	closed := time.Now().UTC().Add(48 * time.Hour).Weekday().String()[:3]
	cfg, err := os.ReadFile(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	with := strings.Replace(string(cfg), `waves = ["100%"]`, fmt.Sprintf("waves = [\"100%%\"]\n    window {\n      days  = %q\n      hours = \"00:00-24:00\"\n    }", closed), 1)
	if with == string(cfg) {
		t.Fatal("no rollout block to add a window to")
	}
	testutil.WriteFile(t, h.cfg, []byte(with))
	sum := f.publish("v1", false)
	f.forgeOpenWave(sum)
	log := f.once()
	if v := h.version(); v != "" {
		t.Fatalf("a document written with an agent's token opened a wave outside the window: the host installed %s\n%s", v, log)
	}
	if !strings.Contains(log, "outside the deploy window") {
		t.Fatalf("the host does not say it is outside its window:\n%s", log)
	}
}

// forgeOpenWave does, with the agent's token, what a compromised host
// can: take the coordinator's role, write a document whose only wave is
// open for sum with host-0 in it, and grant host-0 a slot whenever it
// asks, until the test ends.
func (f *aclFleet) forgeOpenWave(sum string) {
	t := f.t
	h := f.hosts[0]
	kv := f.agent.KV()
	se, _, err := f.agent.Session().Create(&api.SessionEntry{TTL: "60s", Behavior: api.SessionBehaviorDelete}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.admin.Session().Destroy(se, nil) })
	put := func(key string, v any, acquire bool) {
		b, _ := json.Marshal(v)
		p := &api.KVPair{Key: key, Value: b}
		if acquire {
			p.Session = se
			if ok, _, err := kv.Acquire(p, nil); err != nil || !ok {
				t.Fatalf("the agent's token could not take %s: %v %v", key, ok, err)
			}
			return
		}
		if _, err := kv.Put(p, nil); err != nil {
			t.Fatalf("the agent's token could not write %s: %v", key, err)
		}
	}
	slots := lockconsul.SlotsPrefix(f.prefix, "app")
	put(slots+"coord", lockconsul.Doc{Node: "mallory", Since: time.Now(), Limit: 1}, true)
	put(lockconsul.RolloutKey(f.prefix, "app"), lock.Rollout{Checksum: sum, By: "mallory", Time: time.Now(),
		Waves: []lock.WaveState{{Name: "1", Hosts: 1, Open: true}}}, false)
	put(lockconsul.WaveKey(f.prefix, "app", h.name), lockconsul.Placement{Checksum: sum, Wave: "1"}, false)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		key := lockconsul.GrantPrefix(f.prefix, "app") + h.name
		for ctx.Err() == nil {
			p, _, err := kv.Get(key, nil)
			var g lockconsul.Grant
			if err == nil && p != nil && json.Unmarshal(p.Value, &g) == nil && g.State == lockconsul.StateWant {
				g.State, g.By, g.At = lockconsul.StateGranted, "mallory", time.Now()
				b, _ := json.Marshal(g)
				p.Value = b
				kv.CAS(p, nil)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
}
