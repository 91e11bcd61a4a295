// Package local is the lock of one host: update slots are flock(2) on
// files in the state directory, so two agents on one host never install
// the same service at once and a dead holder's lock is freed by the
// kernel. Fleet is a single host's fleet.Agent: there are no shared
// records (the host's own state has them) and no operators' interface.
package local

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/flock"
)

// Slots is a counting semaphore of limit flocks: slot-0 … slot-(N-1).
type Slots struct {
	dir   string
	limit int
	mu    sync.Mutex
	held  *flock.Lock
}

// Acquire takes the first free slot.
func (s *Slots) Acquire(ctx context.Context) (<-chan struct{}, error) {
	for {
		for i := 0; i < s.limit; i++ {
			f := flock.New(filepath.Join(s.dir, fmt.Sprintf("slot-%d", i)))
			ok, err := f.TryAcquire()
			if err != nil {
				return nil, err
			}
			if ok {
				s.mu.Lock()
				s.held = f
				s.mu.Unlock()
				return make(chan struct{}), nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a slot in %s: %w", s.dir, context.Cause(ctx))
		case <-time.After(flock.PollInterval):
		}
	}
}

// Release frees the slot held.
func (s *Slots) Release(ctx context.Context) error {
	s.mu.Lock()
	f := s.held
	s.held = nil
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	return f.Release(ctx)
}

// Fleet is a single host: slots under Dir, nothing shared.
type Fleet struct{ Dir string }

// Semaphore returns the slots of service.
func (p Fleet) Semaphore(service string, limit int) (fleet.Semaphore, error) {
	if limit < 1 {
		limit = 1
	}
	return &Slots{dir: filepath.Join(p.Dir, service, "slots"), limit: limit}, nil
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

var (
	_ fleet.Semaphore = (*flock.Lock)(nil)
	_ fleet.Semaphore = (*Slots)(nil)
	_ fleet.Agent     = Fleet{}
)

// Announce: there is nobody to tell; the agent's own poll finds it.
func (Fleet) Announce(context.Context, fleet.Published) error { return nil }
