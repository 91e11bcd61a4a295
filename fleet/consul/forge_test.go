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

// Each writer appends to the audit log in a folder of its own (an
// agent's token may write nowhere else), so the folder names the writer:
// an event whose who or host is another's (a host writing "hold by alice
// (cli)") is read with its writer, and a host's own events without one.
func TestAuditEventNamesItsWriterWhenItClaimsAnother(t *testing.T) {
	ctx := context.Background()
	mallory := newFleet(t, "web-1")
	for _, ev := range []fleet.Event{
		{Kind: fleet.EventInstall, Who: "web-1", Via: "agent", Node: "web-1"},
		{Kind: fleet.EventHold, Who: "alice", Via: "cli"},
		{Kind: fleet.EventInstall, Who: "web-1", Via: "agent", Node: "web-2"},
	} {
		if err := mallory.Record(ctx, "app", ev); err != nil {
			t.Fatal(err)
		}
	}
	evs, _, err := mallory.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 {
		t.Fatalf("log %+v", evs)
	}
	for i, want := range []string{"", "web-1", "web-1"} {
		if evs[i].Writer != want {
			t.Errorf("event %d (%s by %s on %s): writer %q, want %q", i, evs[i].Kind, evs[i].Who, evs[i].Node, evs[i].Writer, want)
		}
	}
}
