// Package consulevent fires a Consul user event for a deploy, so watches
// (`consul watch -type=event`) elsewhere can react.
package consulevent

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/internal/consulx"
	"github.com/dropshipd/dropship/internal/hclx"
)

// Hook fires one user event per update.
type Hook struct {
	Client        *api.Client
	Name          string
	NodeFilter    string
	ServiceFilter string
	TagFilter     string
}

type config struct {
	Name          *string  `hcl:"name,optional"`
	NodeFilter    *string  `hcl:"node_filter,optional"`
	ServiceFilter *string  `hcl:"service_filter,optional"`
	TagFilter     *string  `hcl:"tag_filter,optional"`
	Conn          hcl.Body `hcl:",remain"` // address, token, TLS: as in lock "consul"
}

// Factory decodes `after "consul-event" { name … }`. The connection keys
// are those of `lock "consul"`; without address it uses CONSUL_HTTP_ADDR
// or 127.0.0.1:8500, like the consul CLI.
func Factory(_ string, body hcl.Body, env hooks.Env) (hooks.Announcer, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	client, d := consulx.NewClient(c.Conn, env.BaseDir)
	diags = append(diags, d...)
	if client == nil {
		return nil, diags
	}
	h := &Hook{Client: client, Name: "dropship-deploy"}
	if c.Name != nil {
		h.Name = *c.Name
	}
	h.NodeFilter, h.ServiceFilter, h.TagFilter = hclx.Str(c.NodeFilter), hclx.Str(c.ServiceFilter), hclx.Str(c.TagFilter)
	return h, diags
}

// Payload is the JSON body of the event.
type Payload struct {
	Service  string `json:"service"`
	Host     string `json:"host"`
	Checksum string `json:"checksum"`
	Previous string `json:"previous_checksum,omitempty"`
	Release  string `json:"release"`
	Phase    string `json:"phase"`
	Result   string `json:"result"`
}

// Run fires the event.
func (h *Hook) Announce(ctx context.Context, ev hooks.Event) error {
	payload, _ := json.Marshal(Payload{Service: ev.Name, Host: ev.Hostname, Checksum: ev.Hash, Previous: ev.PreviousHash,
		Release: ev.Release, Phase: ev.Phase, Result: ev.Result})
	_, _, err := h.Client.Event().Fire(&api.UserEvent{Name: h.Name, Payload: payload,
		NodeFilter: h.NodeFilter, ServiceFilter: h.ServiceFilter, TagFilter: h.TagFilter}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul event %s: %w", h.Name, err)
	}
	return nil
}

var _ hooks.Announcer = (*Hook)(nil)
