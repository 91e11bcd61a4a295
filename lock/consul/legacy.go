package consul

import (
	"context"
	"encoding/json"
	"maps"

	"github.com/hashicorp/consul/api"
)

// Agents of dropship before the grants took consul/api's semaphore under
// <prefix>/<service>/lock/: a record, .lock, naming the sessions that hold
// a slot ({"Limit": N, "Holders": {session: true}}), and one entry per
// contender, <session>, held by that session. While such agents serve the
// service beside newer ones (an upgrade of dropship rolling through the
// fleet), both must keep to one limit. So the coordinator grants a host
// only when the semaphore has room, and in the same transaction enters
// the host in it as a holder, with the host's own session: older agents
// count every grant, a granted host that dies leaves the semaphore as it
// leaves its grant, and a grant is never made over an older agent's slot.
// In a fleet of new agents only, the record stays in memory and the cost
// is one more operation per grant, and one per transaction of grants.

// LegacyPrefix is where the older agents' semaphore lives.
func LegacyPrefix(prefix, service string) string { return prefix + "/" + service + "/lock" }

type legacyLock struct {
	Limit   int
	Holders map[string]bool
	index   uint64 // of .lock; 0 when there is none
	checked bool   // holders not ours were looked up since it was read
}

// legacyRoom returns the semaphore's record, dead holders left out, when
// it has room for one more holder; nil when it is full.
func (c *coordinator) legacyRoom(ctx context.Context) (*legacyLock, error) {
	s := c.s
	prefix := LegacyPrefix(s.Prefix, s.Service)
	if c.legacy == nil {
		kv, _, err := s.Client.KV().Get(prefix+"/.lock", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil {
			return nil, err
		}
		l := &legacyLock{}
		if kv != nil {
			json.Unmarshal(kv.Value, l)
			l.index = kv.ModifyIndex
		}
		if l.Holders == nil {
			l.Holders = map[string]bool{}
		}
		c.legacy = l
	}
	l := c.legacy
	if !l.checked {
		ours := map[string]bool{}
		for _, h := range c.held {
			ours[h.session] = true
		}
		for sess := range l.Holders {
			if ours[sess] {
				continue
			}
			kv, _, err := s.Client.KV().Get(prefix+"/"+sess, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return nil, err
			}
			if kv == nil || kv.Session != sess {
				delete(l.Holders, sess) // its holder is gone
			}
		}
		l.checked = true
	}
	if len(l.Holders) >= s.Limit {
		return nil, nil
	}
	return l, nil
}

// legacyOps enter the hosts of ws in the semaphore: their contender
// entries, each held by its host's session, and the record with them
// among the holders (a check-and-set on the record as read, so an older
// agent's change in between fails the whole grant). The record's
// operation comes last.
func (c *coordinator) legacyOps(l *legacyLock, ws []want) api.TxnOps {
	prefix := LegacyPrefix(c.s.Prefix, c.s.Service)
	holders := maps.Clone(l.Holders)
	var ops api.TxnOps
	for _, w := range ws {
		holders[w.session] = true
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVLock, Key: prefix + "/" + w.session, Value: []byte(w.node), Flags: api.SemaphoreFlagValue, Session: w.session}})
	}
	rec, _ := json.Marshal(struct {
		Limit   int
		Holders map[string]bool
	}{c.s.Limit, holders})
	return append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: prefix + "/.lock", Value: rec, Flags: api.SemaphoreFlagValue, Index: l.index}})
}

// legacyTook notes the grants' entries in the record as written.
func (c *coordinator) legacyTook(l *legacyLock, ws []want, resp *api.TxnResponse) {
	for _, w := range ws {
		l.Holders[w.session] = true
	}
	if r := 1 + 2*len(ws); len(resp.Results) > r && resp.Results[r].KV != nil {
		l.index = resp.Results[r].KV.ModifyIndex
	} else {
		c.legacy = nil // read it again before the next grant
	}
}

// legacyGone drops a released grant's host from the record kept: its
// entry went with its session.
func (c *coordinator) legacyGone(session string) {
	if c.legacy != nil {
		delete(c.legacy.Holders, session)
	}
}
