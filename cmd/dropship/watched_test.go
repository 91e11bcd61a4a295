package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
)

// A host whose record is stale (its last report lost: the record names
// another checksum) registers again with what it runs, and does not carry
// over the old record's watch: it did not watch the release it runs, so
// its wave has not served a bake on its word.
func TestStaleRecordDoesNotCarryItsWatch(t *testing.T) {
	t.Parallel()
	f, h, c := oneHostRollout(t)
	f.onceInstalls(t, h, "v1", "")
	client, err := api.NewClient(&api.Config{Address: c.Addr})
	if err != nil {
		t.Fatal(err)
	}
	key := fleet.NodesKey(f.prefix, "app") + h.name
	stale, _ := json.Marshal(fleet.NodeStatus{Node: h.name, Checksum: "0123456789abcdef0123456789abcdef", Result: "installed",
		Time: time.Now().UTC(), Watched: time.Hour})
	if _, err := client.KV().Put(&api.KVPair{Key: key, Value: stale}, nil); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run(t, "agent", "--once", "-c", h.cfg); code != 0 {
		t.Fatalf("agent --once: exit %d\n%s%s", code, out, errOut)
	}
	kv, _, err := client.KV().Get(key, nil)
	if err != nil || kv == nil {
		t.Fatalf("the host's record: %v", err)
	}
	var ns fleet.NodeStatus
	if err := json.Unmarshal(kv.Value, &ns); err != nil {
		t.Fatal(err)
	}
	if ns.Checksum == "0123456789abcdef0123456789abcdef" || ns.Watched != 0 {
		t.Fatalf("registered again as %+v: want the checksum it runs, and no watch", ns)
	}
}
