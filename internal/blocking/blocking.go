// Package blocking runs a Consul blocking query in a loop the way Consul
// advises: the index is reset when it goes backwards and never 0 (which
// would not block), errors are retried with jittered exponential back-off
// reset on success, and at most one query is made per gap, so that a
// Consul answering at once with an index that did not move cannot make
// the loop spin. Every follower of Consul in dropship (the agent's watch
// and rollout follower, the dashboard, `fleet log --follow`) runs on it.
package blocking

import (
	"context"
	"math/rand/v2"
	"time"
)

// Defaults of a Loop.
const (
	DefaultMinGap     = time.Second
	DefaultBackoff    = time.Second
	DefaultBackoffCap = 30 * time.Second
)

// Loop is how to follow one blocking query.
type Loop struct {
	// MinGap is the least time from the start of one query to the start
	// of the next (default 1 s).
	MinGap time.Duration
	// Backoff is the first wait after an error, doubled after each
	// error in a row up to BackoffCap (defaults 1 s and 30 s); each wait
	// is drawn from its upper half.
	Backoff, BackoffCap time.Duration
	// Down is told of the first error of an outage (not of its retries);
	// Up of the first answer, and of the first after an outage.
	Down func(error)
	Up   func()
	// Sleep waits d or until ctx ends (false then); nil: a timer. Tests
	// count the waits with it.
	Sleep func(ctx context.Context, d time.Duration) bool
}

// Run calls query with the index to wait on, first index, until ctx
// ends, and returns ctx's error. query returns the index Consul answered
// with; after an error the next query is made with index 0 (the Consul
// that answers next may be a new one, behind the old index, on which a
// blocking query would wait its whole time).
func (l Loop) Run(ctx context.Context, index uint64, query func(ctx context.Context, index uint64) (uint64, error)) error {
	gap := l.MinGap
	if gap <= 0 {
		gap = DefaultMinGap
	}
	first := l.Backoff
	if first <= 0 {
		first = DefaultBackoff
	}
	ceiling := max(l.BackoffCap, first)
	if l.BackoffCap <= 0 {
		ceiling = max(DefaultBackoffCap, first)
	}
	sleep := l.Sleep
	if sleep == nil {
		sleep = Sleep
	}
	backoff := first
	down, up := false, false
	for ctx.Err() == nil {
		start := time.Now()
		n, err := query(ctx, index)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			if !down && l.Down != nil {
				l.Down(err)
			}
			down, up = true, false
			index = 0
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, ceiling)
			if !sleep(ctx, wait) {
				break
			}
			continue
		}
		backoff = first
		if !up && l.Up != nil {
			l.Up()
		}
		down, up = false, true
		index = Next(index, n)
		if d := time.Since(start); d < gap && !sleep(ctx, gap-d) {
			break
		}
	}
	return ctx.Err()
}

// Next is the index to wait on after Consul answered got to a query on
// prev: 0 when the index went backwards (a restored snapshot, a new
// cluster: start over), 1 for 0 (which would not block), else got.
func Next(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// Sleep waits d, or until ctx ends (false then).
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
