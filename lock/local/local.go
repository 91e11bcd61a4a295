// Package local is the lock of one host: update slots are flock(2) on
// files in the state directory, so two agents on one host never install
// the same service at once and a dead holder's lock is freed by the
// kernel. fleet/local makes of it a single host's fleet.Agent.
package local

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/dropshipd/dropship/internal/flock"
	"github.com/dropshipd/dropship/lock"
)

// NewSlots returns the counting semaphore of limit (at least 1) flocks
// in dir.
func NewSlots(dir string, limit int) *Slots {
	if limit < 1 {
		limit = 1
	}
	return &Slots{dir: dir, limit: limit}
}

var (
	_ lock.Slot = (*flock.Lock)(nil)
	_ lock.Slot = (*Slots)(nil)
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
