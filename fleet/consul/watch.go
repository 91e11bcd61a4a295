package consul

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
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

// recordsChanged writes the nudge of service's records, after a change
// of them a host at rest acts on (see fleet.RecordsChangedKey). The
// change is written already: a nudge that fails is logged, not returned,
// and the hosts at rest learn of the change at their hourly read of the
// records instead.
func (p *Fleet) recordsChanged(ctx context.Context, service, what string) {
	n := fleet.RecordsChanged{Service: service, What: what, Who: p.Node, Time: time.Now().UTC()}
	if err := p.put(ctx, fleet.RecordsChangedKey(p.Prefix, service), n); err != nil {
		slog.Warn("could not tell the hosts at rest that the fleet's records changed; they learn of it within the hour (a token from `dropship fleet acl-policy` of an older dropship?)",
			"service", service, "what", what, "error", err)
	}
}

// seedWhat is the nudge that only fills an empty folder: no change.
const seedWhat = "watch"

// seed writes the nudge key of service if it is not there (a
// check-and-set on a key that does not exist). A refusal (an agent token
// of an older policy) leaves the folder as it was, and says so (true).
func (p *Fleet) seed(ctx context.Context, service string) (refused bool) {
	n := fleet.RecordsChanged{Service: service, What: seedWhat, Who: p.Node, Time: time.Now().UTC()}
	b, _ := json.Marshal(n)
	_, _, err := p.Client.KV().CAS(&api.KVPair{Key: fleet.RecordsChangedKey(p.Prefix, service), Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	return forbidden(err)
}

// nudgeRefused says whether this token may not write the nudge of
// service: a check-and-set on an index the key cannot have, which
// writes nothing, and which Consul refuses first if the token may not
// write the key.
func (p *Fleet) nudgeRefused(ctx context.Context, service string) bool {
	_, _, err := p.Client.KV().CAS(&api.KVPair{Key: fleet.RecordsChangedKey(p.Prefix, service), ModifyIndex: math.MaxUint64}, (&api.WriteOptions{}).WithContext(ctx))
	return forbidden(err)
}

// forbidden says whether err is Consul's refusal of the token.
func forbidden(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusForbidden
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
	// restoreAnswer: a blocking query of the announcements that comes
	// back sooner than this with the index it waited on was ended by
	// Consul, not by its wait (a restored snapshot). A Consul whose
	// max_query_time is shorter ends every wait so: the hosts at rest
	// then read their records at each of them, as they would without
	// the watch.
	restoreAnswer = publishedWait / 2
)

// WatchPublished long-polls the folder of announcements with Consul's
// blocking queries: one request per agent for all of its services, woken
// only by announcements. It follows Consul's advice on the index (see
// internal/blocking): reset when it goes backwards, never block on zero,
// back off with jitter on errors, and never spin.
func (p *Fleet) WatchPublished(ctx context.Context, w fleet.Watch) error {
	prefix := fleet.PublishedPrefix(p.Prefix)
	seen := map[string]string{} // key -> value last seen: indexes do not survive a new cluster
	first, wasUp, seedRefused := true, false, false
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
		asked := time.Now()
		pairs, meta, err := p.Client.KV().List(prefix, opts)
		if err != nil {
			return index, err
		}
		if index > 1 && meta.LastIndex == index && time.Since(asked) < restoreAnswer && wasUp && w.Up != nil {
			// Consul ends a blocking query early with nothing new when a
			// snapshot is restored (its store abandoned): the restore
			// may have taken the records (a host's registration, a
			// breaker) and left this folder as it was, its index too.
			// The watch starts over, and says so.
			w.Up()
		}
		if first && w.Refused != nil {
			// Before the watch says it is up: a host does not rest on
			// it a moment on a token whose peers' breakers cannot
			// reach it.
			for _, svc := range w.Services {
				if p.nudgeRefused(ctx, svc) {
					w.Refused(svc)
				}
			}
		}
		if len(pairs) == 0 && len(w.Services) > 0 && !seedRefused {
			// An empty folder's index is the whole store's: every write to
			// Consul would wake the watch (and every agent's). A key of
			// its own makes the folder's index its own. A token that may
			// not write it is not asked again at each answer.
			seedRefused = p.seed(ctx, w.Services[0])
		}
		if index > 1 && meta.LastIndex < index && wasUp && w.Up != nil {
			// A Consul that lost its data (a new cluster, a restored
			// snapshot): the watch starts over, and says so.
			w.Up()
		}
		present := make(map[string]bool, len(pairs))
		for _, kv := range pairs {
			present[kv.Key] = true
		}
		for key := range seen {
			if present[key] {
				continue
			}
			delete(seen, key)
			// A nudge deleted (by whoever may write the folder) may be
			// one the watch had no time to see: a change, as any.
			if svc, ok := fleet.RecordsChangedService(p.Prefix, key); ok && w.Records != nil && svc != "" {
				w.Records(svc)
			}
		}
		for _, kv := range pairs {
			prev, had := seen[kv.Key]
			if had && prev == string(kv.Value) {
				continue
			}
			seen[kv.Key] = string(kv.Value)
			if first {
				continue // what was published before the watch began: the poll sees it
			}
			if svc, ok := fleet.RecordsChangedService(p.Prefix, kv.Key); ok {
				var n fleet.RecordsChanged
				json.Unmarshal(kv.Value, &n)
				// Only the seed of an empty folder is no change: the
				// seed's value written over a nudge (whoever may write
				// the folder may write it) is one, or a nudge could be
				// hidden from the watches before they saw it.
				if w.Records != nil && svc != "" && (had || n.What != seedWhat) {
					w.Records(svc)
				}
				continue
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
