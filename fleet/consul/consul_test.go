package consul

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

var servers rig.Servers

func TestMain(m *testing.M) { rig.Main(m, &servers, rig.Need{Consul: true, ACLConsul: true}) }

func newFleet(t *testing.T, node string) *Fleet {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: servers.Consul(t).Addr})
	if err != nil {
		t.Fatal(err)
	}
	return &Fleet{Client: c, Prefix: "test/" + testutil.Unique(t), Node: node, SessionTTL: 10 * time.Second}
}

func TestRecordFromManyHostsAtOnceLosesNothing(t *testing.T) {
	ctx := context.Background()
	const hosts, each = 8, 20
	var wg sync.WaitGroup
	errs := make(chan error, hosts*each)
	for h := range hosts {
		p := newFleet(t, fmt.Sprintf("host-%d", h))
		wg.Go(func() {
			for i := range each {
				errs <- p.Record(ctx, "app", fleet.Event{Kind: fleet.EventInstall, Who: p.Node, Node: p.Node, Checksum: fmt.Sprint(i)})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	evs, idx, err := newFleet(t, "reader").Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ev := range evs {
		seen[ev.Node+"/"+ev.Checksum] = true
		if ev.Service != "app" || ev.Index == 0 || ev.Index > idx || ev.Time.IsZero() {
			t.Fatalf("event %+v (log index %d)", ev, idx)
		}
	}
	if len(evs) != hosts*each || len(seen) != hosts*each {
		t.Fatalf("%d events (%d distinct) in the log, want %d", len(evs), len(seen), hosts*each)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Index <= evs[i-1].Index {
			t.Fatalf("log out of Consul's order at %d: index %d after %d", i, evs[i].Index, evs[i-1].Index)
		}
	}
}

// A host whose clock runs a year ahead neither sorts its events after
// those written later nor gets the operators' events trimmed first.
func TestAuditLogOrderIsConsulsNotTheWritersClock(t *testing.T) {
	ctx := context.Background()
	ahead := newFleet(t, "clock-ahead")
	ops := newFleet(t, "ops")
	ahead.Prefix = ops.Prefix
	future := time.Now().Add(365 * 24 * time.Hour)
	for i := range fleet.MaxEvents {
		if err := ahead.Record(ctx, "app", fleet.Event{Time: future.Add(time.Duration(i) * time.Millisecond), Kind: fleet.EventInstall, Checksum: fmt.Sprint("ahead-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	const mine = 3 * trimSlack
	for i := range mine {
		if err := ops.Record(ctx, "app", fleet.Event{Kind: fleet.EventHold, Who: "ops@desk", Detail: fmt.Sprint("op-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	evs, _, err := ops.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != fleet.MaxEvents {
		t.Fatalf("%d events, want %d", len(evs), fleet.MaxEvents)
	}
	tail := evs[len(evs)-mine:]
	for i, ev := range tail {
		if ev.Detail != fmt.Sprint("op-", i) {
			t.Fatalf("event %d from the end is %q (%s), want the operator's op-%d: the writers' clocks decided the order or the trim", mine-i, ev.Detail+ev.Checksum, ev.Who, i)
		}
	}
	if evs[0].Checksum != fmt.Sprint("ahead-", mine) {
		t.Fatalf("oldest kept %q, want ahead-%d: the first written are trimmed first", evs[0].Checksum, mine)
	}
	keys, _, err := ops.Client.KV().Keys(fleet.AuditKey(ops.Prefix, "app"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > fleet.MaxEvents+trimSlack {
		t.Fatalf("%d keys stored: the log is not trimmed", len(keys))
	}
}

func TestRecordKeepsTheNewestMaxEvents(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "host-0")
	// Fill the log past its bound directly, oldest first, then append.
	base := time.Now().Add(-time.Hour)
	for i := range fleet.MaxEvents + 5 {
		key := fmt.Sprintf("%s%020d-old-%d", p.auditFolder("app"), base.Add(time.Duration(i)*time.Millisecond).UnixNano(), i)
		if _, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: fmt.Appendf(nil, `{"kind":"install","checksum":"%d"}`, i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Record(ctx, "app", fleet.Event{Kind: fleet.EventHold, Who: "ops@desk", Detail: "newest"}); err != nil {
		t.Fatal(err)
	}
	evs, _, err := p.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != fleet.MaxEvents {
		t.Fatalf("%d events kept, want %d", len(evs), fleet.MaxEvents)
	}
	if evs[0].Checksum != "6" || evs[len(evs)-1].Detail != "newest" {
		t.Fatalf("kept %q … %q, want the oldest six dropped and the new event last", evs[0].Checksum, evs[len(evs)-1].Detail)
	}
}

func TestLogBlocksUntilAnEventIsWritten(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "host-0")
	if err := p.Record(ctx, "app", fleet.Event{Kind: fleet.EventInstall, Checksum: "a"}); err != nil {
		t.Fatal(err)
	}
	_, idx, err := p.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		evs []fleet.Event
		err error
	}
	got := make(chan result, 1)
	go func() {
		evs, _, err := p.Log(ctx, "app", idx)
		got <- result{evs, err}
	}()
	if err := p.Record(ctx, "app", fleet.Event{Kind: fleet.EventFailure, Checksum: "b", Detail: "check failed"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || len(r.evs) != 1 || r.evs[0].Checksum != "b" || r.evs[0].Kind != fleet.EventFailure {
			t.Fatalf("after index %d: %+v, %v; want only the new failure", idx, r.evs, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a blocking read of the log did not return after an event was written")
	}
}

func TestWaitWakesOnAnyRecordOfAnyService(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "host-0")
	if err := p.Report(ctx, "app", fleet.NodeStatus{Node: "host-0", Checksum: "a"}); err != nil {
		t.Fatal(err)
	}
	idx, err := p.Wait(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	woke := make(chan uint64, 1)
	go func() {
		n, _ := p.Wait(ctx, idx)
		woke <- n
	}()
	// A record two levels down, of another service: still a change.
	if err := p.Trip(ctx, "web", fleet.Breaker{Checksum: "bad", Phase: "check", Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-woke:
		if n <= idx {
			t.Fatalf("Wait returned index %d, not past %d", n, idx)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Wait did not wake on a breaker written under the prefix")
	}
}

func TestStatusReadsRecordsButNotTheLog(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "host-0")
	p.Report(ctx, "app", fleet.NodeStatus{Node: "host-0", Checksum: "a", Result: "installed"})
	p.Hold(ctx, "app", fleet.Hold{Reason: "freeze", Who: "ops"})
	p.Trip(ctx, "app", fleet.Breaker{Checksum: "bad", Phase: "check", Error: "boom"})
	p.Record(ctx, "app", fleet.Event{Kind: fleet.EventHold, Who: "ops"})
	p.Announce(ctx, fleet.Published{Service: "app", Checksum: "b"}) // the fleet's own folder is no service
	st, err := p.Status(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Checksum != "a" || st.Hold == nil || st.Hold.Reason != "freeze" ||
		len(st.Breakers) != 1 || st.Breakers[0].Checksum != "bad" {
		t.Fatalf("status %+v", st)
	}
	svcs, err := p.Services(ctx)
	if err != nil || len(svcs) != 1 || svcs[0] != "app" {
		t.Fatalf("services %v, %v", svcs, err)
	}
}

func TestOutcomeEvents(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		st    fleet.NodeStatus
		kinds []string
	}{
		{fleet.NodeStatus{Node: "h", Result: "installed", Attempt: "b", Checksum: "b"}, []string{fleet.EventInstall}},
		{fleet.NodeStatus{Node: "h", Result: "failed", Attempt: "b", Checksum: "a", Phase: "download"}, []string{fleet.EventFailure}},
		{fleet.NodeStatus{Node: "h", Result: "failed", Attempt: "b", Checksum: "a", Phase: "check"}, []string{fleet.EventFailure, fleet.EventRollback}},
		{fleet.NodeStatus{Node: "h", Result: "rolledback", Attempt: "a", Checksum: "a"}, []string{fleet.EventRollback}},
		{fleet.NodeStatus{Node: "h", Result: "noop"}, nil},
	} {
		c.st.Time = now
		evs := fleet.OutcomeEvents(c.st)
		var kinds []string
		for _, ev := range evs {
			kinds = append(kinds, ev.Kind)
			if ev.Who != "h" || ev.Node != "h" || !ev.Time.Equal(now) {
				t.Errorf("%+v: event %+v", c.st, ev)
			}
		}
		if fmt.Sprint(kinds) != fmt.Sprint(c.kinds) {
			t.Errorf("%s in %s: kinds %v, want %v", c.st.Result, c.st.Phase, kinds, c.kinds)
		}
	}
}

// A breaker is the key it is written under: a record edited by hand to
// name another checksum (or none) neither lets its own checksum be
// reverted from nor makes hosts on another checksum revert.
func TestBreakerIsItsKey(t *testing.T) {
	p := newFleet(t, "ops")
	ctx := context.Background()
	key := fleet.FailedKey(p.Prefix, "app") + "aaaa"
	if _, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: []byte(`{"checksum":"bbbb","node":"x","phase":"check"}`)}, nil); err != nil {
		t.Fatal(err)
	}
	st, err := p.Status(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if st.Breaker("aaaa") == nil || st.Breaker("bbbb") != nil {
		t.Fatalf("breakers %+v: want aaaa's, as its key says", st.Breakers)
	}
	// Unreadable: still a breaker.
	if _, err := p.Client.KV().Put(&api.KVPair{Key: fleet.FailedKey(p.Prefix, "app") + "cccc", Value: []byte(`{"time": 12}`)}, nil); err != nil {
		t.Fatal(err)
	}
	if st, err = p.Status(ctx, "app"); err != nil || st.Breaker("cccc") == nil {
		t.Fatalf("an unreadable breaker dropped: %+v %v", st.Breakers, err)
	}
}

// An approval is the key it is written under: a record at
// approve/<checksum>/<wave> approves that wave of that checksum, whatever
// its JSON says, and nothing else.
func TestApprovalIsItsKey(t *testing.T) {
	p := newFleet(t, "ops")
	ctx := context.Background()
	base := fleet.RolloutKey(p.Prefix, "app") + "approve/"
	for key, val := range map[string]string{
		"aaaa/canary": `{"checksum":"bbbb","wave":"2","who":"x"}`,
		"cccc/1":      `{"who":"y"}`,
		"dddd/1/2":    `{"checksum":"dddd","wave":"1"}`, // no such key is written: ignored
		"eeee":        `{"checksum":"eeee","wave":"1"}`,
	} {
		if _, err := p.Client.KV().Put(&api.KVPair{Key: base + key, Value: []byte(val)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	st, err := p.Status(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range st.Approvals {
		got[a.Checksum+"/"+a.Wave] = a.Who
	}
	want := map[string]string{"aaaa/canary": "x", "cccc/1": "y"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("approvals %+v: want %v, as their keys say", st.Approvals, want)
	}
	// A name that would not be its own key is refused, not approved as
	// something else.
	if err := p.Approve(ctx, "app", fleet.Approval{Checksum: "ffff", Wave: "a/b"}); err == nil {
		t.Fatal("approved a wave whose name is not a key")
	}
}

// A hold's reason is clipped when written, as a freeze's is: every host
// and every open dashboard reads it.
func TestHoldReasonIsClipped(t *testing.T) {
	p := newFleet(t, "host-0")
	ctx := context.Background()
	long := strings.Repeat("why ", 10000)
	if err := p.Hold(ctx, "app", fleet.Hold{Reason: long, Who: "alice"}); err != nil {
		t.Fatal(err)
	}
	st, err := p.Status(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if st.Hold == nil {
		t.Fatal("no hold read back")
	}
	if got := st.Hold.Reason; got != fleet.Clip(long) {
		t.Fatalf("the reason written is %d bytes, want it clipped to %d", len(got), len(fleet.Clip(long)))
	}
}

// The plan of a rollout is written once: the second writer (a host that
// planned from a later view of the fleet) leaves the first plan in place.
// Only the newest fleet.MaxPlans plans stay.
func TestFixPlanWritesOnceAndKeepsTheNewest(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "h1")
	first := []fleet.PlanWave{{Name: "canary", Nodes: []string{"h1"}}, {Name: "1", Nodes: []string{"h2"}}}
	if ok, err := p.FixPlan(ctx, "app", "sum0", first); err != nil || !ok {
		t.Fatalf("first plan: %v %v", ok, err)
	}
	later := []fleet.PlanWave{{Name: "canary", Nodes: []string{"h3"}}, {Name: "1", Nodes: []string{"h1", "h2"}}}
	if ok, err := p.FixPlan(ctx, "app", "sum0", later); err != nil || ok {
		t.Fatalf("a second plan of the same release was written: %v %v", ok, err)
	}
	st, err := p.Status(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(st.Plans["sum0"]) != fmt.Sprint(first) {
		t.Fatalf("plan %v, want the first %v", st.Plans["sum0"], first)
	}
	for i := 1; i <= fleet.MaxPlans; i++ {
		if _, err := p.FixPlan(ctx, "app", fmt.Sprintf("sum%d", i), first); err != nil {
			t.Fatal(err)
		}
	}
	if st, err = p.Status(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Plans["sum0"]; ok || len(st.Plans) != fleet.MaxPlans {
		t.Fatalf("plans kept: %d (sum0 kept: %v); want the newest %d", len(st.Plans), ok, fleet.MaxPlans)
	}
}
