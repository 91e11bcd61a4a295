package main

import (
	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/artifact/s3"
	"github.com/dropshipd/dropship/artifact/swift"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/fleet/local"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/check"
	"github.com/dropshipd/dropship/hooks/consulevent"
	"github.com/dropshipd/dropship/hooks/graphite"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/hooks/webhook"
)

// registry lists every plugin a config may name. Adding a plugin means
// adding a line here; nothing registers itself.
func registry() agent.Registry {
	return agent.Registry{
		Sources: map[string]artifact.Factory{
			"file":      file.Factory,
			"s3":        s3.Factory,
			"swift":     swift.Factory,
			"rackspace": swift.Factory,
		},
		Hooks: map[string]hooks.Factory{
			"script": script.Factory,
		},
		Announcers: map[string]hooks.AnnouncerFactory{
			"graphite-event":  graphite.EventFactory,
			"graphite-metric": graphite.MetricFactory,
			"consul-event":    consulevent.Factory,
			"http":            webhook.Factory,
		},
		Checks: map[string]hooks.Factory{
			"http":   check.HTTPFactory,
			"tcp":    check.TCPFactory,
			"script": check.ScriptFactory,
		},
		Fleets: map[string]fleet.Factory{
			"local":  local.Factory,
			"consul": consul.Factory,
		},
		Repos: map[string]artifact.RepoFactory{
			"s3":        s3.RepoFactory,
			"swift":     swift.RepoFactory,
			"rackspace": swift.RepoFactory,
		},
	}
}

// publishTargets maps the scheme of `publish --to` onto the repo types
// that can take it, the first also being the repo name used by default.
var publishTargets = map[string][]string{
	"s3":        {"s3"},
	"swift":     {"swift", "rackspace"},
	"rackspace": {"rackspace", "swift"},
}
