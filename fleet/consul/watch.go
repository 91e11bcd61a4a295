package consul

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
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
	watchWait       = 5 * time.Minute
	watchBackoff    = time.Second
	watchBackoffCap = time.Minute
	// watchMinGap keeps a watch from spinning when Consul answers at once
	// with an index that did not move, and bounds how often a flood of
	// announcements (anyone with write access to the folder) can make an
	// agent look at its store: one wake-up a second at most.
	watchMinGap = time.Second
)

// WatchPublished long-polls the folder of announcements with Consul's
// blocking queries: one request per agent for all of its services, woken
// only by announcements. It follows Consul's advice on the index: reset
// when it goes backwards, never block on zero, back off with jitter on
// errors, and never spin.
func (p *Fleet) WatchPublished(ctx context.Context, w fleet.Watch) error {
	prefix := fleet.PublishedPrefix(p.Prefix)
	var index uint64
	seen := map[string]string{} // key -> value last seen: indexes do not survive a new cluster
	first, up := true, false
	backoff := watchBackoff
	for ctx.Err() == nil {
		start := time.Now()
		opts := (&api.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(ctx)
		pairs, meta, err := p.Client.KV().List(prefix, opts)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if up && w.Down != nil {
				w.Down(err)
			}
			up = false
			// The Consul that answers next may be a new one whose index
			// is behind ours: a blocking query would then wait its whole
			// time. Ask without blocking first.
			index = 0
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, watchBackoffCap)
			if !sleep(ctx, wait) {
				break
			}
			continue
		}
		backoff = watchBackoff
		if !up && w.Up != nil {
			w.Up()
		}
		up = true
		switch {
		case meta.LastIndex < index:
			index = 0 // the index went backwards (a restored snapshot, a new leader): start over
		case meta.LastIndex == 0:
			index = 1 // zero would not block
		default:
			index = meta.LastIndex
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
		if gap := time.Since(start); gap < watchMinGap && !sleep(ctx, watchMinGap-gap) {
			break
		}
	}
	return ctx.Err()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

var _ fleet.Watcher = (*Fleet)(nil)
