package consulevent_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/consulevent"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var (
	consul    *rig.Consul
	consulErr error
)

func TestMain(m *testing.M) {
	consul, consulErr = rig.StartConsul()
	code := m.Run()
	if consul != nil {
		consul.Stop()
	}
	os.Exit(code)
}

func TestEventFired(t *testing.T) {
	testutil.RequireServer(t, "Consul", consulErr)
	f, _ := hclparse.NewParser().ParseHCL([]byte(`
name    = "deploys"
address = "`+consul.Addr+`"
`), "t.hcl")
	h, diags := consulevent.Factory("consul-event", f.Body, hooks.Env{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if err := h.Announce(context.Background(), hooks.Event{Name: "api", Hash: "abc", Release: "r1", Result: "success"}); err != nil {
		t.Fatal(err)
	}
	c, _ := api.NewClient(&api.Config{Address: consul.Addr})
	events, _, err := c.Event().List("deploys", nil)
	if err != nil || len(events) != 1 {
		t.Fatalf("%d events, %v", len(events), err)
	}
	var p consulevent.Payload
	json.Unmarshal(events[0].Payload, &p)
	if p.Service != "api" || p.Checksum != "abc" || p.Release != "r1" || p.Result != "success" {
		t.Fatalf("payload %+v", p)
	}
}
