// Package hooks defines what runs around an update: before and after
// chains, health checks and reporting (Graphite, Consul events, webhooks).
package hooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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
	// RunID names one run of a run-once hook (once = "fleet"): a run
	// started again after its host died has the same.
	RunID string
}

// Hook is one step of a gating chain (before, after, check, rollback):
// its error stops the chain, as its policy says.
type Hook interface {
	Run(ctx context.Context, ev Event) error
}

// Announcer tells the world how an update ended (Graphite, webhooks,
// Consul events). It runs once the outcome is known, with ev.Result
// "success", "failure" or "rollback", and never gates anything: its
// error is logged, never fatal, so it cannot sit in a gating chain.
type Announcer interface {
	Announce(ctx context.Context, ev Event) error
}

// Policy is what a failed hook does to its chain.
type Policy string

const (
	// Abort stops the chain and fails the update. In a before chain
	// nothing is switched yet; in a rollback chain the rest is skipped.
	Abort Policy = "abort"
	// Rollback fails the update and switches back to the previous release
	// (after chains and checks: the new release is already current).
	Rollback Policy = "rollback"
	// Continue logs the failure and goes on.
	Continue Policy = "continue"
)

// Env is what a hook plugin may use while decoding its block.
type Env struct {
	BaseDir string
	Logger  *slog.Logger
}

// Factory builds a Hook from the plugin-specific part of a block.
type Factory func(kind string, body hcl.Body, env Env) (Hook, hcl.Diagnostics)

// AnnouncerFactory builds an Announcer from an `after "KIND"` block.
type AnnouncerFactory func(kind string, body hcl.Body, env Env) (Announcer, hcl.Diagnostics)

// Announce is a configured announcer.
type Announce struct {
	Kind      string
	Announcer Announcer
	Range     hcl.Range
}

// Step is a configured hook in a chain.
type Step struct {
	Kind      string // the block label: "script", "graphite-event", …
	Hook      Hook
	OnFailure Policy
	Range     hcl.Range
	// Once is "fleet" for a hook one host of the fleet runs per release
	// while the others wait for it; "" for every host.
	Once string
}

// Redact shows a URL as its scheme and host only: its user info, path
// and query may be the secret (a Slack webhook URL is one), and logs,
// state files and Consul keep errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(a URL)"
	}
	s := u.Scheme + "://" + u.Host
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		s += "/…"
	}
	return s
}

// HTTPError is the error of an HTTP call to raw, named without the URL
// that net/http puts into its own errors.
func HTTPError(what, method, raw string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("%s %s %s: %w", what, method, Redact(raw), err)
}
