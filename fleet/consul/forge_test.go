package consul

import (
	"context"
	"testing"

	"github.com/dropshipd/dropship/fleet"
)

// A host's token may write only its own node record (an exact key), so
// the record at a host's key speaks for that host only: one that names
// another host in its body (a compromised canary claiming a host of a
// later wave installed and watched) is that host's own claim, under its
// own name.
func TestNodeRecordSpeaksOnlyForTheHostOfItsKey(t *testing.T) {
	ctx := context.Background()
	mallory := newFleet(t, "web-1")
	if err := mallory.Report(ctx, "app", fleet.NodeStatus{Node: "web-2", Checksum: "abc", Result: "installed"}); err != nil {
		t.Fatal(err)
	}
	st, err := mallory.Status(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Node != "web-1" {
		t.Fatalf("the record at web-1's key is read as %+v; want web-1's", st.Nodes)
	}
}
