package consul

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
)

// onceMaxRuns: a run-once hook runs, and once more if its host dies
// while running it; never a third time.
const onceMaxRuns = 2

// onceWait bounds one blocking query on the lock of a run-once hook.
const onceWait = 5 * time.Second

// RunOnce runs a run-once hook (once = "fleet") of the release checksum
// on one host of the fleet: the host that takes its lock, a key held by
// a Consul session, runs it and records the outcome; the others wait
// for that record, until ctx ends. A host that dies while running it
// loses the lock with its session, and the next host runs it again, with
// the same run id. It returns the record, and whether run ran here.
func (p *Fleet) RunOnce(ctx context.Context, service, checksum, hook string, run func(ctx context.Context, runID string) error) (fleet.Once, bool, error) {
	base := fleet.OnceKey(p.Prefix, service) + checksum + "/" + hook + "/"
	lockKey, recKey := base+"lock", base+"record"
	sid, _, err := p.Client.Session().Create(&api.SessionEntry{
		Name: "dropship once " + p.Node + " " + service, TTL: p.SessionTTL.String(),
		// The lock delay keeps the lock from the next host for a TTL after
		// the session is lost: by then its runner, cut off from Consul
		// but maybe alive, has stopped the hook (keepSession).
		Behavior: api.SessionBehaviorRelease, LockDelay: p.SessionTTL,
	}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fleet.Once{}, false, fmt.Errorf("%w: create a session for %s: %v", fleet.ErrUnavailable, lockKey, err)
	}
	done := make(chan struct{})
	defer func() {
		close(done)
		p.Client.Session().Destroy(sid, nil)
	}()
	lost := p.keepSession(sid, done)

	kv := p.Client.KV()
	var index uint64
	for {
		var rec fleet.Once
		found, err := p.get(ctx, recKey, &rec)
		if err != nil {
			return rec, false, err
		}
		if found && rec.Result != fleet.OnceRunning {
			return rec, false, rec.Err()
		}
		ok, _, err := kv.Acquire(&api.KVPair{Key: lockKey, Value: []byte(p.Node), Session: sid}, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return rec, false, fmt.Errorf("%w: take %s: %v", fleet.ErrUnavailable, lockKey, err)
		}
		if ok {
			return p.runHeld(ctx, lockKey, recKey, sid, lost, fleet.Once{Checksum: checksum, Hook: hook}, run)
		}
		// Held by another host: wait for it to let go (done, or dead).
		pair, meta, err := kv.Get(lockKey, (&api.QueryOptions{WaitIndex: index, WaitTime: onceWait}).WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return rec, false, fmt.Errorf("waiting for the run-once hook %s of %s (held by %s): %w", hook, checksum, rec.Node, context.Cause(ctx))
			}
			return rec, false, fmt.Errorf("%w: read %s: %v", fleet.ErrUnavailable, lockKey, err)
		}
		index = meta.LastIndex
		if pair == nil || pair.Session == "" {
			// Free, yet not taken: its holder's session was lost and
			// the lock delay runs. Try again shortly.
			index = 0
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// runHeld runs the hook under its lock, unless it ended meanwhile.
func (p *Fleet) runHeld(ctx context.Context, lockKey, recKey, sid string, lost <-chan struct{}, rec fleet.Once, run func(context.Context, string) error) (fleet.Once, bool, error) {
	defer p.Client.KV().Release(&api.KVPair{Key: lockKey, Session: sid}, nil)
	var last fleet.Once
	found, err := p.get(ctx, recKey, &last)
	switch {
	case err != nil:
		return last, false, err
	case found && last.Result != fleet.OnceRunning:
		return last, false, last.Err()
	case found && last.Runs >= onceMaxRuns:
		// Its host died running it, twice: a third run is not tried.
		last.Result, last.Time = fleet.OnceFailure, time.Now().UTC()
		last.Error = fmt.Sprintf("its host (%s) died while running it, after a first host had; not run a third time", last.Node)
		if err := p.put(context.WithoutCancel(ctx), recKey, last); err != nil {
			return last, false, err
		}
		return last, false, last.Err()
	case found:
		rec.RunID, rec.Runs = last.RunID, last.Runs+1 // the same run, again
	default:
		rec.RunID, rec.Runs = newRunID(), 1
	}
	rec.Node, rec.Result, rec.Time = p.Node, fleet.OnceRunning, time.Now().UTC()
	if err := p.put(ctx, recKey, rec); err != nil {
		return rec, false, err
	}
	// The hook stops when the session is lost: another host may then
	// take the lock and run it again.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lost:
			cancel(errSessionLost)
		case <-rctx.Done():
		}
	}()
	err = run(rctx, rec.RunID)
	if context.Cause(rctx) == errSessionLost {
		return rec, true, fmt.Errorf("%w: the run-once hook %s of %s stopped: %w (another host runs it again)", fleet.ErrUnavailable, rec.Hook, rec.Checksum, errSessionLost)
	}
	if err != nil && ctx.Err() != nil {
		// Cut short (the agent stops): not the hook's verdict. The record
		// stays "running" and the next host runs it again.
		return rec, true, err
	}
	rec.Result, rec.Time = fleet.OnceSuccess, time.Now().UTC()
	if err != nil {
		rec.Result, rec.Error = fleet.OnceFailure, fleet.Clip(err.Error())
	}
	if perr := p.put(context.WithoutCancel(ctx), recKey, rec); perr != nil {
		return rec, true, errors.Join(err, perr)
	}
	return rec, true, err
}

var errSessionLost = errors.New("lost its session in Consul while running it")

// keepSession renews the session sid until done is closed. The channel it
// returns is closed once the session is lost: Consul no longer knows it,
// or no renewal got through for a TTL (Consul may then expire it any
// moment). Each renewal is bounded, so a stalled link is noticed.
func (p *Fleet) keepSession(sid string, done <-chan struct{}) <-chan struct{} {
	lost := make(chan struct{})
	ttl := p.SessionTTL
	go func() {
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case <-time.After(ttl / 4):
			}
			ctx, cancel := context.WithTimeout(context.Background(), ttl/4)
			e, _, err := p.Client.Session().Renew(sid, (&api.WriteOptions{}).WithContext(ctx))
			cancel()
			switch {
			case err == nil && e == nil:
				close(lost)
				return
			case err == nil:
				last = time.Now()
			case time.Since(last) >= ttl:
				close(lost)
				return
			}
		}
	}()
	return lost
}

func newRunID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// OnceRecords lists the run-once records of service, oldest first.
func (p *Fleet) OnceRecords(ctx context.Context, service string) ([]fleet.Once, error) {
	pairs, _, err := p.Client.KV().List(fleet.OnceKey(p.Prefix, service), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", fleet.ErrUnavailable, fleet.OnceKey(p.Prefix, service), err)
	}
	var out []fleet.Once
	for _, kv := range pairs {
		var o fleet.Once
		if strings.HasSuffix(kv.Key, "/record") && json.Unmarshal(kv.Value, &o) == nil {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}
