// Package hooks defines what runs around an update: before and after
// chains, health checks and reporting (Graphite, Consul events, webhooks).
package hooks

import (
	"context"
	"log/slog"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Phases of an update, as Event.Phase and DROPSHIP_PHASE.
const (
	PhaseBefore   = "before"
	PhaseAfter    = "after"
	PhaseCheck    = "check"
	PhaseRollback = "rollback"
)

// Event is what a hook knows about the update it runs in. Its exported
// fields are the names templates use: {{.Name}}, {{.Hash}}, …
type Event struct {
	Name         string // service
	Hostname     string // node name
	Hash         string // checksum being installed (or rolled back to)
	PreviousHash string
	Release      string // release id
	ReleaseDir   string
	PreviousDir  string
	Phase        string
	Result       string // "success", "failure", "rollback", or "" while running
	Error        string
	Duration     time.Duration
	Time         time.Time
}

// Hook is one step of a chain.
type Hook interface {
	Run(ctx context.Context, ev Event) error
}

// Policy is what a failed hook does to its chain.
type Policy string

const (
	Abort    Policy = "abort"    // stop the chain; the update fails
	Rollback Policy = "rollback" // the update fails and is rolled back
	Continue Policy = "continue" // log it and go on
)

// Reporter is implemented by hooks that only tell the world (Graphite,
// webhooks): their failure must never undo a good deploy, so their
// default policy is Continue.
type Reporter interface {
	Reporter() bool
}

// Env is what a hook plugin may use while decoding its block.
type Env struct {
	BaseDir string
	Logger  *slog.Logger
}

// Factory builds a Hook from the plugin-specific part of a block.
type Factory func(kind string, body hcl.Body, env Env) (Hook, hcl.Diagnostics)

// Step is a configured hook in a chain.
type Step struct {
	Kind      string // the block label: "script", "graphite-event", …
	Hook      Hook
	OnFailure Policy
	Range     hcl.Range
}
