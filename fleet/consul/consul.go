// Package consul keeps the fleet in Consul: a semaphore in its KV store
// (hashicorp/consul/api) so that only N hosts of a service update at once,
// and the records every host reads and writes (holds, breakers, node
// status). It fails closed: without Consul no update starts.
package consul

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/dropshipd/dropship/artifact/signature"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/consulx"
	"github.com/dropshipd/dropship/internal/hclx"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// Defaults of the lock block.
const (
	DefaultPrefix     = "dropship"
	DefaultSessionTTL = 15 * time.Second
)

// Fleet is the fleet of every service, in Consul.
type Fleet struct {
	Client     *api.Client
	Prefix     string
	Node       string
	SessionTTL time.Duration
	// OperatorKeys: with any, operators' records count only when signed
	// by one of them (operatorRecord).
	OperatorKeys []OperatorKey
	// Signer signs the operators' records written through this Fleet
	// (`--operator-key`), or nil.
	Signer *Signer
	// trimOdds: a report checks the audit log's trim once in trimOdds,
	// at random (0: trimSlack). Tests only.
	trimOdds int
	// scope: what this writer's token may delete of the audit logs, as
	// its reports found (trimScope); shared by copies of the Fleet.
	scope *atomic.Int32
	// shares: each service's share of the audit log's bound this writer
	// keeps of its own events when it may delete no other (trimShare);
	// shared by copies of the Fleet.
	shares *sync.Map
}

type config struct {
	Prefix       *string           `hcl:"prefix,optional"`
	SessionTTL   *string           `hcl:"session_ttl,optional"`
	OperatorKeys map[string]string `hcl:"operator_keys,optional"`
	Conn         hcl.Body          `hcl:",remain"`
}

// Factory decodes `lock "consul" { … }`.
func Factory(_ string, body hcl.Body, env fleet.Env) (fleet.Agent, hcl.Diagnostics) {
	var c config
	diags := gohcl.DecodeBody(body, nil, &c)
	if diags.HasErrors() {
		return nil, diags
	}
	p := &Fleet{Prefix: DefaultPrefix, Node: env.NodeName, scope: new(atomic.Int32), shares: new(sync.Map)}
	if c.Prefix != nil {
		p.Prefix = strings.Trim(*c.Prefix, "/")
	}
	var d hcl.Diagnostics
	p.SessionTTL, d = hclx.Duration(body, "session_ttl", hclx.Str(c.SessionTTL), DefaultSessionTTL)
	diags = append(diags, d...)
	if p.SessionTTL < 10*time.Second || p.SessionTTL > 24*time.Hour {
		diags = append(diags, hclx.Errorf(body, "session_ttl", "Invalid session_ttl", "Consul accepts session TTLs from 10s to 24h."))
	}
	names := make([]string, 0, len(c.OperatorKeys))
	for name := range c.OperatorKeys {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		pk, err := signature.ParseKey(c.OperatorKeys[name], env.BaseDir)
		if err != nil {
			diags = append(diags, hclx.Errorf(body, "operator_keys", "Invalid operator key", "%s: %v", name, err))
			continue
		}
		p.OperatorKeys = append(p.OperatorKeys, OperatorKey{Name: name, Key: pk})
	}
	p.Client, d = consulx.NewClient(c.Conn, env.BaseDir)
	diags = append(diags, d...)
	if p.Client == nil {
		return nil, diags
	}
	return p, diags
}

// Semaphore returns this host's claim on the limit update slots of
// service: grants handed out by a coordinator elected among the waiting
// agents (lock/consul).
func (p *Fleet) Semaphore(service string, limit int) (fleet.Semaphore, error) {
	return lockconsul.New(p.Client, p.Prefix, service, p.Node, p.SessionTTL, limit), nil
}

// LegacySemaphore is consul/api's semaphore under <service>/lock/: every
// waiting host wakes on every change under the prefix and reads every
// contender's entry.
func (p *Fleet) LegacySemaphore(service string, limit int) *Semaphore {
	return &Semaphore{p: p, service: service, limit: max(limit, 1)}
}

// Semaphore is one host's claim on a service's slots.
type Semaphore struct {
	p       *Fleet
	service string
	limit   int
	mu      sync.Mutex
	held    *api.Semaphore
}

// Acquire blocks (on Consul blocking queries, not a poll) until a slot is
// held or ctx ends. Giving up is an error, never a slot.
func (s *Semaphore) Acquire(ctx context.Context) (<-chan struct{}, error) {
	sem, err := s.p.Client.SemaphoreOpts(&api.SemaphoreOptions{
		Prefix:      fleet.LockKey(s.p.Prefix, s.service),
		Limit:       s.limit,
		Value:       []byte(s.p.Node),
		SessionName: "dropship " + s.p.Node + " " + s.service,
		SessionTTL:  s.p.SessionTTL.String(),
		// A short blip of Consul does not lose the slot; a long one does.
		MonitorRetries:   3,
		MonitorRetryTime: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", fleet.ErrUnavailable, err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			close(stop)
		case <-done:
		}
	}()
	lost, err := sem.Acquire(stop)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: consul semaphore %s: %v", fleet.ErrUnavailable, fleet.LockKey(s.p.Prefix, s.service), err)
	case lost == nil:
		// Acquire returns nothing when told to stop: not a slot.
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for a slot: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("%w: consul semaphore gave up", fleet.ErrUnavailable)
	}
	s.mu.Lock()
	s.held = sem
	s.mu.Unlock()
	return lost, nil
}

// Release frees the slot and destroys the session, so the next host in
// line starts at once.
func (s *Semaphore) Release(context.Context) error {
	s.mu.Lock()
	sem := s.held
	s.held = nil
	s.mu.Unlock()
	if sem == nil {
		return nil
	}
	err := sem.Release()
	if errors.Is(err, api.ErrSemaphoreNotHeld) {
		return nil // lost already; nothing to give back
	}
	return err
}

func (p *Fleet) get(ctx context.Context, key string, v any) (bool, error) {
	kv, _, err := p.Client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("%w: read %s: %v", fleet.ErrUnavailable, key, err)
	}
	if kv == nil {
		return false, nil
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return true, fmt.Errorf("read %s: %w", key, err)
	}
	return true, nil
}

func (p *Fleet) put(ctx context.Context, key string, v any) error {
	b, _ := json.Marshal(v)
	_, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: write %s: %v", fleet.ErrUnavailable, key, err)
	}
	return nil
}

// Blocked returns why no update of checksum may start: a hold, or a
// breaker tripped by another host. An unreachable Consul is an error: the
// caller starts nothing (fail closed).
func (p *Fleet) Blocked(ctx context.Context, service, checksum string) (string, error) {
	// Both keys in one consistent read (a tree: a missing key would fail
	// the transaction).
	holdKey, failedKey := fleet.HoldKey(p.Prefix, service), fleet.FailedKey(p.Prefix, service)+checksum
	ok, resp, _, err := p.Client.Txn().Txn(api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: holdKey}},
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: failedKey}},
	}, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err == nil && !ok {
		err = fmt.Errorf("%v", resp.Errors)
	}
	if err != nil {
		return "", fmt.Errorf("%w: read %s and %s: %v", fleet.ErrUnavailable, holdKey, failedKey, err)
	}
	var hold, failed *api.KVPair
	for _, r := range resp.Results {
		switch {
		case r.KV == nil:
		case r.KV.Key == holdKey:
			hold = r.KV
		case r.KV.Key == failedKey:
			failed = r.KV
		}
	}
	if h, err := p.holdOf(service, hold); err != nil {
		return "", err
	} else if h != nil {
		return fmt.Sprintf("on hold since %s by %s: %s", h.Time.Format(time.RFC3339), h.Who, h.Reason), nil
	}
	var b fleet.Breaker
	if failed != nil {
		if err := json.Unmarshal(failed.Value, &b); err != nil {
			return "", fmt.Errorf("read %s: %w", failedKey, err)
		}
		return fmt.Sprintf("checksum %s failed on %s in %s: %s (lift with `dropship fleet clear %s %s`)",
			checksum, b.Node, b.Phase, b.Error, service, checksum), nil
	}
	return "", nil
}

// holdOf is the hold in kv as operatorRecord accepts it: nil when there
// is none, or none signed by an operator key when keys are set.
func (p *Fleet) holdOf(service string, kv *api.KVPair) (*fleet.Hold, error) {
	if kv == nil {
		return nil, nil
	}
	var h fleet.Hold
	who, err := p.operatorRecord(service, kv, &h)
	switch {
	case err != nil && len(p.OperatorKeys) > 0:
		return nil, nil // ignored; Status says why
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", kv.Key, err) // unreadable is still a hold: fail closed
	case who != "":
		h.Who = who
	}
	return &h, nil
}

// Trip marks a checksum failed for the fleet. The error text is clipped:
// every host and operator reads it.
func (p *Fleet) Trip(ctx context.Context, service string, b fleet.Breaker) error {
	b.Node, b.Error = p.Node, fleet.Clip(b.Error)
	if b.Time.IsZero() {
		b.Time = time.Now().UTC()
	}
	if err := p.put(ctx, fleet.FailedKey(p.Prefix, service)+b.Checksum, b); err != nil {
		return err
	}
	p.recordsChanged(ctx, service, "breaker")
	return nil
}

// Report writes this host's status.
func (p *Fleet) Report(ctx context.Context, service string, st fleet.NodeStatus) error {
	st.Error = fleet.Clip(st.Error)
	return p.put(ctx, fleet.NodesKey(p.Prefix, service)+p.Node, st)
}

// ReportEvents writes this host's status and appends evs (at most a few:
// an outcome's) to the audit log, in one transaction: one request, and
// whoever reads the status finds its events written. Every host of a
// rollout reports at its end, so the log's trim is not checked on each
// of these appends but on one in trimCheck, at random (see trimDue), by
// a writer whose token may trim the whole log. One whose token may
// delete only its own events (an agent's, AgentPolicy) trims its own
// folder to its share on each (trimShare), as Record does, else the log
// would grow by about trimCheck events per host past its bound. Which it
// is rides along in the transaction (see trimScope): no request of its
// own.
// When Consul refuses the transaction (a token that may write the status
// but not the log, or the log but not the status), the events are
// recorded one by one and the status after them, each as far as the
// token lets it.
// An error about the events only, once the status is written, wraps
// fleet.ErrStatusWritten; one about the status only, once the events
// are written, fleet.ErrEventsWritten.
func (p *Fleet) ReportEvents(ctx context.Context, service string, st fleet.NodeStatus, evs []fleet.Event) error {
	st.Error = fleet.Clip(st.Error)
	b, _ := json.Marshal(st)
	ops := api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVSet, Key: fleet.NodesKey(p.Prefix, service) + p.Node, Value: b}}}
	// The events share the transaction's index: their keys keep their
	// order (a failure, then the switch back), which Log follows.
	var after int64
	for _, ev := range evs {
		key, val, at := p.event(service, ev, after)
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: val}})
		after = at
	}
	// The delete of a key in no writer's folder (a folder's name has no
	// space), never written: it changes nothing, and Consul refuses it
	// to a token that may not trim the whole log.
	probe := len(evs) > 0 && p.trimScope() != trimOwn
	if probe {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: fleet.AuditKey(p.Prefix, service) + " trim"}})
	}
	ok, resp, _, err := p.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil && !ok && probe && onlyOp(resp.Errors, len(ops)-1) {
		p.setTrimScope(trimOwn)
		probe, ops = false, ops[:len(ops)-1]
		ok, resp, _, err = p.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	}
	if err != nil {
		return fmt.Errorf("%w: report the status of %s and its %d events: %v", fleet.ErrUnavailable, service, len(evs), err)
	}
	if !ok {
		// Each on its own, the events first (whoever reads the status
		// finds them), as before the transaction: a token refused the
		// status still leaves the outcome in the log.
		refused := fmt.Errorf("report the status of %s with its events: %s", service, txnErrors(resp.Errors))
		var lost []error
		for _, ev := range evs {
			if err := p.Record(ctx, service, ev); err != nil {
				lost = append(lost, err)
			}
		}
		if err := p.Report(ctx, service, st); err != nil {
			if len(lost) == 0 && len(evs) > 0 {
				return fmt.Errorf("%w, not the status; %w", fleet.ErrEventsWritten, errors.Join(refused, err))
			}
			return errors.Join(append([]error{refused, err}, lost...)...)
		}
		if len(lost) == 0 {
			return nil // written in steps
		}
		return fmt.Errorf("%w; %w", fleet.ErrStatusWritten, errors.Join(append([]error{refused}, lost...)...))
	}
	if probe {
		p.setTrimScope(trimAll)
	}
	if len(evs) > 0 && (!probe || p.trimDue()) {
		if err := p.trim(ctx, service, fleet.MaxEvents); err != nil {
			return fmt.Errorf("%w, and its events; %w", fleet.ErrStatusWritten, err)
		}
	}
	return nil
}

// onlyOp says whether every error of a refused transaction is its
// operation i's.
func onlyOp(errs api.TxnErrors, i int) bool {
	for _, e := range errs {
		if e.OpIndex != i {
			return false
		}
	}
	return len(errs) > 0
}

// What a writer's token may delete of the audit logs, as its reports
// found (Fleet.scope): not known yet, every writer's events, or only its
// own folder's.
const (
	trimUnknown int32 = iota
	trimAll
	trimOwn
)

// trimScope is what this writer's token may delete of the audit logs,
// as far as it knows. A Fleet built by hand (no scope) asks with each
// report.
func (p *Fleet) trimScope() int32 {
	if p.scope == nil {
		return trimUnknown
	}
	return p.scope.Load()
}

func (p *Fleet) setTrimScope(v int32) {
	if p.scope != nil {
		p.scope.Store(v)
	}
}

// txnErrors says why Consul refused a transaction.
func txnErrors(errs api.TxnErrors) string {
	var b strings.Builder
	for i, e := range errs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "op %d: %s", e.OpIndex, e.What)
	}
	return b.String()
}

// Hold writes a hold: no host starts an update of service until Resume.
// The reason is clipped, as a freeze's: every host and operator reads it.
func (p *Fleet) Hold(ctx context.Context, service string, h fleet.Hold) error {
	if h.Time.IsZero() {
		h.Time = time.Now().UTC()
	}
	h.Reason = fleet.Clip(h.Reason)
	return p.putOperator(ctx, service, fleet.HoldKey(p.Prefix, service), h)
}

// Resume removes the hold of service.
func (p *Fleet) Resume(ctx context.Context, service string) error {
	if _, err := p.Client.KV().Delete(fleet.HoldKey(p.Prefix, service), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("%w: %v", fleet.ErrUnavailable, err)
	}
	return nil
}

// Clear lifts the breaker of checksum; false if there was none. It notes
// when, so that rollouts stop counting the failures from before.
func (p *Fleet) Clear(ctx context.Context, service, checksum string) (bool, error) {
	if err := p.signable(); err != nil {
		return false, err // before the breaker goes: its clear would not count
	}
	ok, err := p.delete(ctx, fleet.FailedKey(p.Prefix, service)+checksum)
	if err != nil || !ok {
		return ok, err
	}
	return true, p.putOperator(ctx, service, fleet.RolloutKey(p.Prefix, service)+"cleared/"+keySafe(checksum), map[string]any{"checksum": checksum, "time": time.Now().UTC()})
}

// SetFreeze writes or lifts the freeze of service.
func (p *Fleet) SetFreeze(ctx context.Context, service string, f *fleet.Freeze) error {
	key := fleet.RolloutKey(p.Prefix, service) + "freeze"
	if f == nil {
		_, err := p.delete(ctx, key)
		return err
	}
	if f.Time.IsZero() {
		f.Time = time.Now().UTC()
	}
	f.Reason = fleet.Clip(f.Reason)
	return p.putOperator(ctx, service, key, f)
}

// SetPin writes or removes the pin of the hosts matching glob.
func (p *Fleet) SetPin(ctx context.Context, service, glob string, pin *fleet.Pin) (bool, error) {
	sum := sha256.Sum256([]byte(glob))
	key := fleet.RolloutKey(p.Prefix, service) + "pins/" + hex.EncodeToString(sum[:8])
	if pin == nil {
		return p.delete(ctx, key) // a pinned host does not stay at rest: its checks read the records
	}
	pin.Nodes = glob
	if pin.Time.IsZero() {
		pin.Time = time.Now().UTC()
	}
	if err := p.putOperator(ctx, service, key, pin); err != nil {
		return true, err
	}
	p.recordsChanged(ctx, service, "pin")
	return true, nil
}

// Approve lets a wave of a rollout of a checksum start.
func (p *Fleet) Approve(ctx context.Context, service string, a fleet.Approval) error {
	if len(a.Wave) == 0 || len(a.Wave) > 64 || len(a.Checksum) == 0 || len(a.Checksum) > 128 {
		return fmt.Errorf("approve: a wave name (up to 64 bytes) and a checksum (up to 128) are needed")
	}
	// The key is the approval (Status reads it back from the key): a name
	// the key would change approves nothing, so refuse it.
	if keySafe(a.Wave) != a.Wave || keySafe(a.Checksum) != a.Checksum {
		return fmt.Errorf("approve: wave %q or checksum %q has a slash, a space or a control character", a.Wave, a.Checksum)
	}
	if a.Time.IsZero() {
		a.Time = time.Now().UTC()
	}
	return p.putOperator(ctx, service, fleet.RolloutKey(p.Prefix, service)+"approve/"+a.Checksum+"/"+a.Wave, a)
}

// FixPlan writes the plan of the rollout of checksum if none is written
// (a check-and-set on a key that does not exist), then keeps only the
// newest fleet.MaxPlans plans of service.
func (p *Fleet) FixPlan(ctx context.Context, service, checksum string, waves []fleet.PlanWave) (bool, error) {
	prefix := fleet.RolloutKey(p.Prefix, service) + "plan/"
	b, _ := json.Marshal(waves)
	ok, _, err := p.Client.KV().CAS(&api.KVPair{Key: prefix + keySafe(checksum), Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("%w: fix the plan of %s of %s: %v", fleet.ErrUnavailable, checksum, service, err)
	}
	if !ok {
		return false, nil
	}
	pairs, _, err := p.Client.KV().List(prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || len(pairs) <= fleet.MaxPlans {
		return true, nil // the old plans go next time
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].CreateIndex > pairs[j].CreateIndex })
	for _, kv := range pairs[fleet.MaxPlans:] {
		p.Client.KV().DeleteCAS(&api.KVPair{Key: kv.Key, ModifyIndex: kv.ModifyIndex}, (&api.WriteOptions{}).WithContext(ctx))
	}
	return true, nil
}

// Forget removes the node record of node.
func (p *Fleet) Forget(ctx context.Context, service, node string) (bool, error) {
	ok, err := p.delete(ctx, fleet.NodesKey(p.Prefix, service)+node)
	if ok {
		p.recordsChanged(ctx, service, "forget") // a host still running registers again
	}
	return ok, err
}

// delete removes key, saying whether it was there.
func (p *Fleet) delete(ctx context.Context, key string) (bool, error) {
	kv, _, err := p.Client.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("%w: %v", fleet.ErrUnavailable, err)
	}
	if kv == nil {
		return false, nil
	}
	if _, err = p.Client.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return false, fmt.Errorf("%w: %v", fleet.ErrUnavailable, err)
	}
	return true, nil
}

// Services lists the services with records under the prefix.
func (p *Fleet) Services(ctx context.Context) ([]string, error) {
	keys, _, err := p.Client.KV().Keys(p.Prefix+"/", "/", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", fleet.ErrUnavailable, err)
	}
	var out []string
	for _, k := range keys {
		name := strings.TrimSuffix(strings.TrimPrefix(k, p.Prefix+"/"), "/")
		if strings.HasPrefix(name, "_") {
			continue // the fleet's own folders (announcements), never a service
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

// Status reads the fleet records of service in one transaction, leaving
// out the audit log (up to MaxEvents values nobody asked for).
func (p *Fleet) Status(ctx context.Context, service string) (fleet.Status, error) {
	slots := lockconsul.SlotsPrefix(p.Prefix, service)
	return p.status(ctx, service, []string{"nodes/", "hold", "failed/", "lock/", "rollout/"},
		fleet.PublishedPrefix(p.Prefix)+service, slots+"coord", slots+"grant/")
}

// Records reads what the coordinator of a rollout decides from: every
// host's record and the operators' (Status without the slots, the older
// semaphore and the published release, which only operators read: at
// thousands of hosts waiting, the slots are as large as the records).
func (p *Fleet) Records(ctx context.Context, service string) (fleet.Status, error) {
	return p.status(ctx, service, []string{"nodes/", "hold", "failed/", "rollout/"})
}

// RecordsOf is Records with the records of nodes only (the operators'
// whole, the plans aside): what a coordinator decides from when it knows
// which hosts' records can have changed (a wave's last host is done: the
// hosts of open waves not done yet). Its size grows with nodes, not the
// fleet; up to 8 transactions at once.
func (p *Fleet) RecordsOf(ctx context.Context, service string, nodes []string) (fleet.Status, error) {
	ops := []string{"hold", "failed/", "rollout/freeze", "rollout/pins/", "rollout/cleared/", "rollout/approve/"}
	const per = 64 - 6
	var batches [][]string
	for len(nodes) > per {
		batches, nodes = append(batches, nodes[:per]), nodes[per:]
	}
	batches = append(batches, nodes)
	sts := make([]fleet.Status, len(batches))
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, b := range batches {
		subs := make([]string, 0, per+len(ops))
		if i == 0 {
			subs = append(subs, ops...)
		}
		for _, n := range b {
			subs = append(subs, "nodes/"+n)
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			sts[i], errs[i] = p.status(ctx, service, subs)
		}()
	}
	wg.Wait()
	want := map[string]bool{}
	for _, b := range batches {
		for _, n := range b {
			want[n] = true
		}
	}
	st := sts[0]
	st.Nodes = nil
	for i := range sts {
		if errs[i] != nil {
			return st, errs[i]
		}
		for _, n := range sts[i].Nodes {
			if want[n.Node] { // the tree of nodes/host-1 holds nodes/host-10 too
				st.Nodes = append(st.Nodes, n)
				delete(want, n.Node)
			}
		}
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Node < st.Nodes[j].Node })
	return st, nil
}

// Brief reads what one host of service needs of the records before it
// asks the coordinator of a rollout: its own record, the hold, the
// breakers, the freeze, the pins and the clears. Its size does not grow
// with the fleet (the breakers and pins are the operators').
func (p *Fleet) Brief(ctx context.Context, service, node string) (fleet.Status, error) {
	st, err := p.status(ctx, service, []string{"nodes/" + node, "hold", "failed/", "rollout/freeze", "rollout/pins/", "rollout/cleared/"})
	own := st.Nodes[:0]
	for _, n := range st.Nodes {
		if n.Node == node { // the tree of nodes/host-1 holds nodes/host-10 too
			own = append(own, n)
		}
	}
	st.Nodes = own
	return st, err
}

// Looker is a coordinator's reads (lock/consul's Slots) that may ride
// along with a host's read of its records: see BriefAlong.
type Looker interface {
	LookOps() api.TxnOps
	Looks(key string) bool
	Looked(api.KVPairs)
}

// BriefAlong is Brief, with the reads of coord's Rollout in the same
// transaction when coord is a Looker (one request rather than two: each
// check of a host of a rollout makes both); Rollout then takes them.
func (p *Fleet) BriefAlong(ctx context.Context, service, node string, coord any) (fleet.Status, error) {
	lk, ok := coord.(Looker)
	if !ok {
		return p.Brief(ctx, service, node)
	}
	var seen api.KVPairs
	st, err := p.statusWith(ctx, service, []string{"nodes/" + node, "hold", "failed/", "rollout/freeze", "rollout/pins/", "rollout/cleared/"}, nil,
		lk.LookOps(), func(kv *api.KVPair) bool {
			if lk.Looks(kv.Key) {
				seen = append(seen, kv)
				return true
			}
			return false
		})
	if err != nil {
		return st, err
	}
	lk.Looked(seen)
	own := st.Nodes[:0]
	for _, n := range st.Nodes {
		if n.Node == node {
			own = append(own, n)
		}
	}
	st.Nodes = own
	return st, nil
}

// status reads the trees subs of the service's folder and the trees
// named in full by more, in one transaction.
func (p *Fleet) status(ctx context.Context, service string, subs []string, more ...string) (fleet.Status, error) {
	return p.statusWith(ctx, service, subs, more, nil, nil)
}

// statusWith is status with the operations also in the transaction,
// whose pairs take takes (it says which are its own).
func (p *Fleet) statusWith(ctx context.Context, service string, subs []string, more []string, also api.TxnOps, take func(*api.KVPair) bool) (fleet.Status, error) {
	st := fleet.Status{Service: service}
	base := p.Prefix + "/" + service + "/"
	var ops api.TxnOps
	for _, sub := range subs {
		// One host's record is one key: a tree of nodes/web-1 would bring
		// web-10 to web-1999 along. get-or-empty answers a missing key
		// with an empty pair (ModifyIndex 0), which is skipped below.
		verb := api.KVGetTree
		if n, ok := strings.CutPrefix(sub, "nodes/"); ok && n != "" {
			verb = api.KVGetOrEmpty
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: verb, Key: base + sub}})
	}
	// A get of a missing key fails a transaction; a tree does not.
	pubKey := fleet.PublishedPrefix(p.Prefix) + service
	slots := lockconsul.SlotsPrefix(p.Prefix, service)
	for _, k := range more {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: k}})
	}
	ops = append(ops, also...)
	ok, resp, _, err := p.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return st, fmt.Errorf("%w: read %s: %v", fleet.ErrUnavailable, base, err)
	}
	if !ok {
		return st, fmt.Errorf("%w: read %s: %v", fleet.ErrUnavailable, base, resp.Errors)
	}
	sessions := map[string]string{} // session -> node, from contender entries
	var lockDoc struct {
		Limit   int
		Holders map[string]bool
	}
	for _, r := range resp.Results {
		kv := r.KV
		if kv == nil || kv.ModifyIndex == 0 || take != nil && take(kv) {
			continue
		}
		if kv.Key == pubKey {
			var pub fleet.Published
			if json.Unmarshal(kv.Value, &pub) == nil {
				st.Published = &pub
			}
			continue
		}
		if slot, ok := strings.CutPrefix(kv.Key, slots); ok {
			switch {
			case slot == "coord":
				var d lockconsul.Doc
				if json.Unmarshal(kv.Value, &d) == nil && kv.Session != "" {
					st.Limit = max(st.Limit, d.Limit)
				}
			case strings.HasPrefix(slot, "grant/"):
				var g lockconsul.Grant
				if kv.Session != "" && json.Unmarshal(kv.Value, &g) == nil && g.State == lockconsul.StateGranted {
					st.Holders = append(st.Holders, strings.TrimPrefix(slot, "grant/"))
					st.Limit = max(st.Limit, g.Limit)
				}
			}
			continue
		}
		rest, under := strings.CutPrefix(kv.Key, base)
		switch {
		case !under:
		case strings.HasPrefix(rest, "nodes/"):
			var n fleet.NodeStatus
			if json.Unmarshal(kv.Value, &n) == nil {
				// The key names the host (a host's token may write only
				// its own): a body naming another is still its claim.
				n.Node = strings.TrimPrefix(rest, "nodes/")
				st.Nodes = append(st.Nodes, n)
			}
		case rest == "hold":
			var h fleet.Hold
			who, err := p.operatorRecord(service, kv, &h)
			switch {
			case err != nil && len(p.OperatorKeys) > 0:
				ignore(&st, rest, err)
				continue
			case err != nil:
				// Unreadable is still a hold: Blocked fails on it, so no
				// host updates. Show it, and how to lift it.
				h = fleet.Hold{Reason: "an unreadable hold record (" + err.Error() + "); `dropship resume` lifts it", Who: "?"}
			case who != "":
				h.Who = who
			}
			st.Hold = &h
		case strings.HasPrefix(rest, "failed/"):
			// The key is the checksum refused, as Blocked reads it; an
			// unreadable record still refuses it (fail closed).
			var b fleet.Breaker
			if err := json.Unmarshal(kv.Value, &b); err != nil {
				b = fleet.Breaker{Node: "?", Error: "an unreadable breaker record (" + err.Error() + "); `dropship fleet clear` lifts it"}
			}
			b.Checksum = strings.TrimPrefix(rest, "failed/")
			st.Breakers = append(st.Breakers, b)
		case rest == "rollout/freeze":
			var f fleet.Freeze
			who, err := p.operatorRecord(service, kv, &f)
			switch {
			case err != nil && len(p.OperatorKeys) > 0:
				ignore(&st, rest, err)
				continue
			case err != nil:
				// Unreadable is still a freeze: fail closed.
				f = fleet.Freeze{Reason: "an unreadable freeze record (" + err.Error() + "); `dropship fleet unfreeze` lifts it", Who: "?"}
			case who != "":
				f.Who = who
			}
			st.Freeze = &f
		case strings.HasPrefix(rest, "rollout/cleared/"):
			var c struct {
				Checksum string    `json:"checksum"`
				Time     time.Time `json:"time"`
			}
			if _, err := p.operatorRecord(service, kv, &c); err != nil {
				if len(p.OperatorKeys) > 0 {
					ignore(&st, rest, err)
				}
			} else {
				if st.Cleared == nil {
					st.Cleared = map[string]time.Time{}
				}
				st.Cleared[c.Checksum] = c.Time
			}
		case strings.HasPrefix(rest, "rollout/plan/"):
			var waves []fleet.PlanWave
			if json.Unmarshal(kv.Value, &waves) == nil {
				if st.Plans == nil {
					st.Plans = map[string][]fleet.PlanWave{}
				}
				st.Plans[strings.TrimPrefix(rest, "rollout/plan/")] = waves
			}
		case strings.HasPrefix(rest, "rollout/pins/"):
			var pin fleet.Pin
			who, err := p.operatorRecord(service, kv, &pin)
			switch {
			case err != nil && len(p.OperatorKeys) > 0:
				ignore(&st, rest, err)
			case err == nil:
				if who != "" {
					pin.Who = who
				}
				st.Pins = append(st.Pins, pin)
			}
		case strings.HasPrefix(rest, "rollout/approve/"):
			// The key is what is approved, as Approve writes it: a record
			// cannot approve another checksum or wave than its key names.
			// The JSON only says who and when; an unreadable one approves
			// nothing.
			sum, wave, ok := strings.Cut(strings.TrimPrefix(rest, "rollout/approve/"), "/")
			var a fleet.Approval
			if !ok || sum == "" || wave == "" || strings.Contains(wave, "/") {
				continue
			}
			who, err := p.operatorRecord(service, kv, &a)
			if err != nil {
				if len(p.OperatorKeys) > 0 {
					ignore(&st, rest, err)
				}
				continue
			}
			if who != "" {
				a.Who = who
			}
			a.Checksum, a.Wave = sum, wave
			st.Approvals = append(st.Approvals, a)
		case rest == "lock/.lock":
			json.Unmarshal(kv.Value, &lockDoc)
		case strings.HasPrefix(rest, "lock/") && kv.Session != "":
			sessions[kv.Session] = string(kv.Value)
		}
	}
	// The semaphore of agents before the grants: its holders that are
	// not grants (whose entries carry the node name too) are older agents.
	st.Limit = max(st.Limit, lockDoc.Limit)
	for sess := range lockDoc.Holders {
		if node, ok := sessions[sess]; ok && !slices.Contains(st.Holders, node) {
			st.Holders = append(st.Holders, node)
		}
	}
	sort.Strings(st.Holders)
	sortIgnored(&st)
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Node < st.Nodes[j].Node })
	return st, nil
}

// The audit log is one key per event, named by time, writer and a random
// suffix. Hosts append at once without contention: no key is shared, so
// no write can lose another (a ring of MaxEvents slots would need a
// check-and-set on a shared head counter, retried by every host that
// loses the race). The order of the log is Consul's: the index at which
// each key was created, never the writers' clocks, so a host whose clock
// runs ahead can neither sort its events after the operators' nor have
// theirs trimmed first.

// trimSlack is how far past MaxEvents the log may grow before it is
// trimmed: the trim reads every event (for its index), so it runs once
// per trimSlack appends rather than on each. A quarter of MaxEvents: at
// a twentieth, the reports of a rollout of 5,000 hosts read 29 MB of the
// log to trim it (bench-scale, 6 KB of the 23 KB each host's rollout
// read). Checked once in trimCheck reports (trimDue), the log then holds
// up to 1,334 events before a trim as a median, 1,619 at the 95th
// percentile and 1,845 at the 99th, and a rollout of 5,000 hosts reads
// about 12 MB to trim it (a simulation of the policy; checked once in
// trimSlack, the 99th percentile was 2,368). Log returns the newest
// MaxEvents.
const trimSlack = fleet.MaxEvents / 4

// trimCheck: a report whose token may trim the whole log checks the trim
// once in trimCheck, at random (trimDue).
const trimCheck = trimSlack / 2

// Record appends ev to the audit log of service and trims the log to
// fleet.MaxEvents.
func (p *Fleet) Record(ctx context.Context, service string, ev fleet.Event) error {
	key, b, _ := p.event(service, ev, 0)
	if _, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("%w: record %s event of %s: %v", fleet.ErrUnavailable, ev.Kind, service, err)
	}
	return p.trim(ctx, service, fleet.MaxEvents)
}

// event is the key and value of ev in this writer's folder of the audit
// log of service. The key's time is ev's, or a nanosecond past after
// (when not 0) if ev's is not later: events written in one transaction
// share its index, and their keys then say their order.
func (p *Fleet) event(service string, ev fleet.Event, after int64) (string, []byte, int64) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time, ev.Service, ev.Index, ev.Detail = ev.Time.UTC(), service, 0, fleet.Clip(ev.Detail)
	var rnd [4]byte
	rand.Read(rnd[:])
	b, _ := json.Marshal(ev)
	at := ev.Time.UnixNano()
	if after != 0 && at <= after {
		at = after + 1
	}
	return fmt.Sprintf("%s%020d-%x", p.auditFolder(service), at, rnd), b, at
}

// trimDue says whether a host's report checks the log's trim: one in
// trimCheck at random (trimOdds in tests), so that the log is still
// checked twice per trimSlack appends across the fleet, and a rollout of
// N hosts lists its keys (up to about 1,500 of them, 75 KB) about
// N/trimCheck times rather than N.
func (p *Fleet) trimDue() bool {
	odds := p.trimOdds
	if odds <= 0 {
		odds = trimCheck
	}
	return mrand.N(odds) == 0
}

// auditFolder is where this writer appends to the audit log of service:
// a folder of its own, so that an agent's token may append there without
// being able to delete other writers' events (see AgentPolicy).
func (p *Fleet) auditFolder(service string) string {
	return fleet.AuditKey(p.Prefix, service) + keySafe(p.Node) + "/"
}

// trim deletes the events written first (by Consul's index) beyond keep,
// once there are trimSlack more. Two hosts trimming at once may delete
// the same keys: deleting a missing key is no error. A writer whose token
// may not delete them all deletes those it may (one kept from the
// operators' folder, the others'); one whose token may delete only its
// own events keeps its share of keep instead (trimShare).
func (p *Fleet) trim(ctx context.Context, service string, keep int) error {
	if p.trimScope() == trimOwn {
		return p.trimShare(ctx, service, keep)
	}
	prefix := fleet.AuditKey(p.Prefix, service)
	keys, _, err := p.Client.KV().Keys(prefix, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: trim the audit log of %s: %v", fleet.ErrUnavailable, service, err)
	}
	if len(keys) <= keep+trimSlack {
		return nil
	}
	pairs, _, err := p.Client.KV().List(prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: trim the audit log of %s: %v", fleet.ErrUnavailable, service, err)
	}
	if len(pairs) <= keep {
		return nil
	}
	sort.SliceStable(pairs, func(i, j int) bool { return pairs[i].CreateIndex < pairs[j].CreateIndex }) // one index: one writer's transaction, its keys in order
	old := pairs[:len(pairs)-keep]
	// Every writer's events it may delete, its own among them: a token
	// that passed the report's probe may still be kept from some folders
	// (the operators'), and the others' events must not wait for their
	// writers' turn.
	refused, _, err := p.deleteAll(ctx, service, old)
	others := 0
	for _, kv := range old {
		if !strings.HasPrefix(kv.Key, p.auditFolder(service)) {
			others++
		}
	}
	if err == nil && others > 0 && refused >= others {
		p.setTrimScope(trimOwn) // none but its own: they are trimmed at each report (trimShare)
	}
	return err
}

// trimShare keeps this writer's folder of the audit log of service to
// its share of keep: keep over the number of writers, one at least. Its
// token may delete no other writer's events (an agent's, AgentPolicy),
// so it cannot trim the log to keep by Consul's order: in a fleet of
// more hosts than keep, each host keeps at least its newest event, and
// finding its own among the oldest would read the whole log, thousands
// of events, at every report of every host. This reads the keys of its
// own folder (and its events, when there are more than its share), and
// the names of the writers' folders at its first trim and once in
// trimCheck after. It deletes its own oldest by Consul's order, never
// the events of its newest transaction (a report's failure and its
// rollback). The log then holds about keep events, or one report's per
// writer when there are more writers; while a fleet grows, until the
// shares are read again, more (each host's share read when fewer hosts
// had written). An operator's command trims it to keep by Consul's
// order once it holds more than keep + trimSlack (trim), and readers
// get the newest keep.
func (p *Fleet) trimShare(ctx context.Context, service string, keep int) error {
	share := 0
	if p.shares != nil {
		if v, ok := p.shares.Load(service); ok && !p.trimDue() {
			share = v.(int)
		}
	}
	if share == 0 {
		folders, _, err := p.Client.KV().Keys(fleet.AuditKey(p.Prefix, service), "/", (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("%w: trim the audit log of %s: %v", fleet.ErrUnavailable, service, err)
		}
		writers := 0
		for _, k := range folders {
			if strings.HasSuffix(k, "/") {
				writers++
			}
		}
		share = max(1, keep/max(1, writers))
		if p.shares != nil {
			p.shares.Store(service, share)
		}
	}
	keys, _, err := p.Client.KV().Keys(p.auditFolder(service), "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: trim the audit log of %s: %v", fleet.ErrUnavailable, service, err)
	}
	if len(keys) <= share {
		return nil
	}
	own, _, err := p.Client.KV().List(p.auditFolder(service), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: trim the audit log of %s: %v", fleet.ErrUnavailable, service, err)
	}
	if len(own) <= share {
		return nil
	}
	// Consul's order, not this host's clock (which may have stepped
	// back past events it wrote); the events of one transaction (one
	// report: a failure and its rollback) in the order of their keys,
	// and never the newest transaction's, whatever the share.
	sort.SliceStable(own, func(i, j int) bool {
		if own[i].CreateIndex != own[j].CreateIndex {
			return own[i].CreateIndex < own[j].CreateIndex
		}
		return own[i].Key < own[j].Key
	})
	n := len(own) - share
	for n > 0 && own[n-1].CreateIndex == own[len(own)-1].CreateIndex {
		n--
	}
	_, why, err := p.deleteAll(ctx, service, own[:n])
	if err == nil {
		err = why
	}
	return err
}

// deleteAll deletes the events old of the audit log of service, all but
// those Consul refuses this writer's token: refused of them, why says
// why (nil when none).
func (p *Fleet) deleteAll(ctx context.Context, service string, old api.KVPairs) (refused int, why, err error) {
	for len(old) > 0 {
		n := min(len(old), 64) // Consul's limit of operations per transaction
		batch := old[:n]
		old = old[n:]
		for len(batch) > 0 {
			var ops api.TxnOps
			for _, kv := range batch {
				ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: kv.Key}})
			}
			ok, resp, _, err := p.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return refused, why, fmt.Errorf("%w: trim the audit log of %s: %v", fleet.ErrUnavailable, service, err)
			}
			if ok {
				break
			}
			// The same without the operations refused.
			drop := map[int]bool{}
			for _, e := range resp.Errors {
				if e.OpIndex >= 0 && e.OpIndex < len(batch) {
					drop[e.OpIndex] = true
				}
			}
			if len(drop) == 0 {
				return refused, why, fmt.Errorf("trim the audit log of %s: %s", service, txnErrors(resp.Errors))
			}
			if why == nil {
				why = fmt.Errorf("trim the audit log of %s: %s", service, txnErrors(resp.Errors))
			}
			refused += len(drop)
			var rest api.KVPairs
			for i, kv := range batch {
				if !drop[i] {
					rest = append(rest, kv)
				}
			}
			batch = rest
		}
	}
	return refused, why, nil
}

// LogWait bounds one blocking read of the audit log.
const LogWait = 5 * time.Minute

// Log returns the audit log of service, in the order Consul wrote it
// (oldest first), at most fleet.MaxEvents. With since > 0 it
// is a Consul blocking query: it returns once something was written after
// since (or after LogWait, with no events and the same index).
func (p *Fleet) Log(ctx context.Context, service string, since uint64) ([]fleet.Event, uint64, error) {
	q := (&api.QueryOptions{WaitIndex: since, WaitTime: LogWait}).WithContext(ctx)
	pairs, meta, err := p.Client.KV().List(fleet.AuditKey(p.Prefix, service), q)
	if err != nil {
		return nil, since, fmt.Errorf("%w: read the audit log of %s: %v", fleet.ErrUnavailable, service, err)
	}
	idx := meta.LastIndex
	if idx < since {
		since = 0 // Consul's index went back (a restarted -dev agent): read it all again
	}
	var out []fleet.Event
	for _, kv := range pairs {
		if kv.ModifyIndex <= since {
			continue
		}
		var ev fleet.Event
		if json.Unmarshal(kv.Value, &ev) != nil {
			continue
		}
		ev.Index, ev.Writer = kv.ModifyIndex, ""
		// The folder names the writer (Record; an agent's token may
		// write only its own): say so when the event names another.
		if w, _, ok := strings.Cut(strings.TrimPrefix(kv.Key, fleet.AuditKey(p.Prefix, service)), "/"); ok &&
			(w != keySafe(ev.Who) || ev.Node != "" && w != keySafe(ev.Node)) {
			ev.Writer = w
		}
		out = append(out, ev)
	}
	// Consul's order, not the writers' clocks. Events are never changed
	// after they are written, so the modify index is the create index.
	// Events of one index were written in one transaction, by one writer
	// (ReportEvents): their keys, in Consul's order, say theirs.
	sort.SliceStable(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	if since == 0 && len(out) > fleet.MaxEvents { // not trimmed yet (trimSlack)
		out = out[len(out)-fleet.MaxEvents:]
	}
	return out, idx, nil
}

// Wait blocks until any record under the prefix changes after index (or
// a minute passes) and returns the new index: one cheap blocking query
// (service names only) that tells a watcher when to read again.
func (p *Fleet) Wait(ctx context.Context, index uint64) (uint64, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: time.Minute}).WithContext(ctx)
	_, meta, err := p.Client.KV().Keys(p.Prefix+"/", "/", q)
	if err != nil {
		return index, fmt.Errorf("%w: watch %s/: %v", fleet.ErrUnavailable, p.Prefix, err)
	}
	return meta.LastIndex, nil
}

// WaitService blocks until a record of service changes past index: one
// long poll on the service's folder, listing only its top level.
func (p *Fleet) WaitService(ctx context.Context, service string, index uint64) (uint64, error) {
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(ctx)
	_, meta, err := p.Client.KV().Keys(p.Prefix+"/"+service+"/", "/", q)
	if err != nil {
		return index, fmt.Errorf("%w: watch %s/%s/: %v", fleet.ErrUnavailable, p.Prefix, service, err)
	}
	return meta.LastIndex, nil
}

var _ fleet.ServiceWatcher = (*Fleet)(nil)

func keySafe(s string) string {
	if s == "" {
		return "unknown"
	}
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r < 0x20 {
			return '_'
		}
		return r
	}, s)
}

var (
	_ fleet.Fleet     = (*Fleet)(nil)
	_ fleet.Semaphore = (*Semaphore)(nil)
)
