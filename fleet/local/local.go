// Package local is a single host's fleet.Agent: update slots are
// lock/local's flocks in the state directory, there are no shared records
// (the host's own state has them) and no operators' interface. It is the
// agent's default when the config names no lock.
package local

import (
	"context"
	"path/filepath"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/lock/local"
)

// Fleet is a single host: slots under Dir, nothing shared.
type Fleet struct{ Dir string }

// Semaphore returns the slots of service.
func (p Fleet) Semaphore(service string, limit int) (fleet.Semaphore, error) {
	return local.NewSlots(filepath.Join(p.Dir, service, "slots"), limit), nil
}

// Blocked: nothing but this host decides.
func (Fleet) Blocked(context.Context, string, string) (string, error) { return "", nil }

// Trip: the host's state records the failure; there is nobody to tell.
func (Fleet) Trip(context.Context, string, fleet.Breaker) error { return nil }

// Report: the status endpoint and state file are the report.
func (Fleet) Report(context.Context, string, fleet.NodeStatus) error { return nil }

// Record: a single host keeps its history in its state file.
func (Fleet) Record(context.Context, string, fleet.Event) error { return nil }

type config struct {
	Path string `hcl:"path,optional"`
}

// Factory decodes `lock "local" { path = "…" }` (default: the state dir).
func Factory(_ string, body hcl.Body, env fleet.Env) (fleet.Agent, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	dir := env.StatePath
	if c.Path != "" {
		dir = c.Path
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(env.BaseDir, dir)
		}
	}
	return Fleet{Dir: dir}, diags
}

var _ fleet.Agent = Fleet{}

// Announce: there is nobody to tell; the agent's own poll finds it.
func (Fleet) Announce(context.Context, fleet.Published) error { return nil }
