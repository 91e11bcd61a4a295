package main

import (
	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/artifact"
	"github.com/dropshipd/dropship/artifact/file"
	"github.com/dropshipd/dropship/hooks"
	"github.com/dropshipd/dropship/hooks/script"
	"github.com/dropshipd/dropship/lock"
	"github.com/dropshipd/dropship/lock/local"
)

// registry lists every plugin a config may name. Adding a plugin means
// adding a line here; nothing registers itself.
func registry() agent.Registry {
	return agent.Registry{
		Sources: map[string]artifact.Factory{
			"file": file.Factory,
		},
		Hooks: map[string]hooks.Factory{
			"script": script.Factory,
		},
		Checks: map[string]hooks.Factory{
			"script": script.Factory,
		},
		Locks: map[string]lock.Factory{
			"local": local.Factory,
		},
	}
}
