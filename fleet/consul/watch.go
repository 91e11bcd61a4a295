package consul

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/blocking"
)

// Announce writes the published record of p.Service.
func (p *Fleet) Announce(ctx context.Context, pub fleet.Published) error {
	if pub.Time.IsZero() {
		pub.Time = time.Now().UTC()
	}
	return p.put(ctx, fleet.PublishedPrefix(p.Prefix)+pub.Service, pub)
}

// Blocking queries: how long Consul may hold one, and the back-off after
// an error (doubling, with jitter, up to the cap).
const (
	watchWait = 5 * time.Minute
	// publishedWait: the watch of the announcements is held by every
	// agent all the time, so it waits as long as Consul lets a query
	// wait (its max_query_time, 10 minutes by default): six requests an
	// hour per agent at rest, not twelve.
	publishedWait   = 10 * time.Minute
	watchBackoff    = time.Second
	watchBackoffCap = time.Minute
	// watchMinGap keeps a watch from spinning when Consul answers at once
	// with an index that did not move, and bounds how often a flood of
	// announcements (anyone with write access to the folder) can make an
	// agent look at its store: one wake-up a second at most.
	watchMinGap = blocking.DefaultMinGap
)

// WatchPublished long-polls the folder of announcements with Consul's
// blocking queries: one request per agent for all of its services, woken
// only by announcements. It follows Consul's advice on the index (see
// internal/blocking): reset when it goes backwards, never block on zero,
// back off with jitter on errors, and never spin.
func (p *Fleet) WatchPublished(ctx context.Context, w fleet.Watch) error {
	prefix := fleet.PublishedPrefix(p.Prefix)
	seen := map[string]string{} // key -> value last seen: indexes do not survive a new cluster
	first, wasUp := true, false
	loop := blocking.Loop{MinGap: watchMinGap, Backoff: watchBackoff, BackoffCap: watchBackoffCap,
		Up: func() {
			wasUp = true
			if w.Up != nil {
				w.Up()
			}
		},
		Down: func(err error) {
			if wasUp && w.Down != nil { // a watch that never answered was never up
				w.Down(err)
			}
		},
	}
	return loop.Run(ctx, 0, func(ctx context.Context, index uint64) (uint64, error) {
		opts := (&api.QueryOptions{WaitIndex: index, WaitTime: publishedWait}).WithContext(ctx)
		pairs, meta, err := p.Client.KV().List(prefix, opts)
		if err != nil {
			return index, err
		}
		for _, kv := range pairs {
			if seen[kv.Key] == string(kv.Value) {
				continue
			}
			seen[kv.Key] = string(kv.Value)
			if first {
				continue // what was published before the watch began: the poll sees it
			}
			var pub fleet.Published
			if err := json.Unmarshal(kv.Value, &pub); err != nil {
				continue
			}
			if pub.Service == "" {
				pub.Service = strings.TrimPrefix(kv.Key, prefix)
			}
			w.Changed(pub)
		}
		first = false
		return meta.LastIndex, nil
	})
}

var _ fleet.Watcher = (*Fleet)(nil)
