package consulevent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/consulevent"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var servers rig.Servers

func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{Consul: true}) }

func TestEventFired(t *testing.T) {
	name := "deploys-" + testutil.Unique(t) // with -count, a run of its own
	f, _ := hclparse.NewParser().ParseHCL([]byte(`
name    = "`+name+`"
address = "`+servers.Consul(t).Addr+`"
`), "t.hcl")
	h, diags := consulevent.Factory("consul-event", f.Body, hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if err := h.Announce(context.Background(), hooks.Event{Name: "api", Hash: "abc", Release: "r1", Result: "success"}); err != nil {
		t.Fatal(err)
	}
	c, _ := api.NewClient(&api.Config{Address: servers.Consul(t).Addr})
	// Fired through the agent's gossip: its list has the event once the
	// agent has received it back, not at once.
	var events []*api.UserEvent
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		if events, _, err = c.Event().List(name, nil); err != nil || len(events) == 0 {
			return fmt.Errorf("%d events, %v", len(events), err)
		}
		return nil
	})
	if len(events) != 1 {
		t.Fatalf("%d events, want 1", len(events))
	}
	var p consulevent.Payload
	json.Unmarshal(events[0].Payload, &p)
	if p.Service != "api" || p.Checksum != "abc" || p.Release != "r1" || p.Result != "success" {
		t.Fatalf("payload %+v", p)
	}
}
