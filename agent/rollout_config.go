package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/hclx"
)

type rolloutBlock struct {
	Canary    *int          `hcl:"canary,optional"`
	Waves     []string      `hcl:"waves,optional"`
	Bake      *string       `hcl:"bake,optional"`
	Approve   []string      `hcl:"approve,optional"`
	MaxFailed *int          `hcl:"max_failed,optional"`
	OnFailure *string       `hcl:"on_failure,optional"`
	Windows   []windowBlock `hcl:"window,block"`
	Gates     []gateBlock   `hcl:"gate,block"`
	Body      hcl.Body      `hcl:",body"`
}

type windowBlock struct {
	Days     *string  `hcl:"days,optional"`
	Hours    string   `hcl:"hours"`
	Timezone *string  `hcl:"timezone,optional"`
	Body     hcl.Body `hcl:",body"`
}

type gateBlock struct {
	Kind string   `hcl:"kind,label"`
	Body hcl.Body `hcl:",remain"`
}

type prometheusGate struct {
	Address string   `hcl:"address"`
	Query   string   `hcl:"query"`
	For     *string  `hcl:"for,optional"`
	Step    *string  `hcl:"step,optional"`
	Body    hcl.Body `hcl:",remain"`
}

// decodeRollout reads a service's rollout block. A rollout coordinates
// hosts, so it needs the fleet's records (lock "consul").
func decodeRollout(s *Service, blocks []rolloutBlock, fleetKind string) hcl.Diagnostics {
	if len(blocks) == 0 {
		return nil
	}
	b := blocks[0]
	rng := b.Body.MissingItemRange()
	if len(blocks) > 1 {
		r := blocks[1].Body.MissingItemRange()
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Duplicate rollout block", Detail: "A service has one rollout block.", Subject: &r}}
	}
	if fleetKind != "consul" {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Rollout without a fleet",
			Detail: `A rollout block shapes how the hosts of a fleet take a release: it needs a lock "consul" block in the agent file.`, Subject: &rng}}
	}
	var diags hcl.Diagnostics
	p := &rollout.Policy{MaxFailed: 1, OnFailure: rollout.OnFailureStop, Approve: b.Approve}
	if b.Canary != nil {
		p.Canary = *b.Canary
	}
	if b.MaxFailed != nil {
		p.MaxFailed = *b.MaxFailed
	}
	if b.OnFailure != nil {
		p.OnFailure = *b.OnFailure
	}
	waves := b.Waves
	if waves == nil {
		waves = []string{"100%"}
	}
	for _, w := range waves {
		wave, err := rollout.ParseWave(w)
		if err != nil {
			diags = append(diags, hclx.Errorf(b.Body, "waves", "Invalid wave", "%v", err))
			continue
		}
		p.Waves = append(p.Waves, wave)
	}
	var ds hcl.Diagnostics
	p.Bake, ds = hclx.Duration(b.Body, "bake", hclx.Str(b.Bake), 0)
	diags = append(diags, ds...)
	if len(b.Windows) > 1 {
		r := b.Windows[1].Body.MissingItemRange()
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate window block", Detail: "A rollout has one window block.", Subject: &r})
	}
	for _, wb := range b.Windows[:min(len(b.Windows), 1)] {
		w, err := rollout.ParseWindow(hclx.Str(wb.Days), wb.Hours, hclx.Str(wb.Timezone))
		if err != nil {
			key := "hours"
			if pr := (rollout.Problem{}); errors.As(err, &pr) {
				key = pr.Key
			}
			diags = append(diags, hclx.Errorf(wb.Body, key, "Invalid window", "%v", err))
			continue
		}
		p.Window = w
	}
	for _, gb := range b.Gates {
		g, spec, ds := decodeGate(gb)
		diags = append(diags, ds...)
		if g != nil {
			p.Gates = append(p.Gates, g)
			p.GateSpecs = append(p.GateSpecs, spec)
		}
	}
	for _, pr := range p.Validate() {
		if pr.Key == "waves" && len(p.Waves) < len(waves) {
			continue // an unreadable wave is reported already
		}
		diags = append(diags, hclx.Errorf(b.Body, pr.Key, "Invalid rollout", "%s", pr.Msg))
	}
	if len(p.Gates) > 0 && p.Bake < time.Second {
		diags = append(diags, hclx.Errorf(b.Body, "bake", "Gate without a bake",
			"A gate judges the metrics during the bake between waves: set bake, at least 1s (like \"10m\")."))
	}
	s.Rollout = p
	return diags
}

func decodeGate(gb gateBlock) (rollout.Gate, string, hcl.Diagnostics) {
	switch gb.Kind {
	case "prometheus":
		var pg prometheusGate
		diags := gohcl.DecodeBody(gb.Body, nil, &pg)
		if diags.HasErrors() {
			return nil, "", diags
		}
		if _, ds := hclx.URL(pg.Body, "address", pg.Address); ds.HasErrors() {
			return nil, "", ds
		}
		g := &rollout.Prometheus{Address: pg.Address, Query: pg.Query}
		var ds hcl.Diagnostics
		g.For, ds = hclx.Duration(pg.Body, "for", hclx.Str(pg.For), 0)
		diags = append(diags, ds...)
		g.Step, ds = hclx.Duration(pg.Body, "step", hclx.Str(pg.Step), 0)
		diags = append(diags, ds...)
		if err := g.Validate(); err != nil {
			diags = append(diags, hclx.Errorf(gb.Body, "query", "Invalid gate query", "query: %v", err))
		}
		// The spec goes into the policy's hash, published in Consul:
		// never credentials.
		return g, fmt.Sprintf("prometheus %s %q for=%s step=%s", rollout.RedactAddress(pg.Address), pg.Query, g.For, g.Step), diags
	}
	r := gb.Body.MissingItemRange()
	return nil, "", hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Unknown gate",
		Detail: fmt.Sprintf("No gate %q; the gates are: prometheus.", gb.Kind), Subject: &r}}
}
