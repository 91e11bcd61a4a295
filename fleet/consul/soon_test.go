package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/rollout"
	"github.com/dropshipd/dropship/internal/rig/testutil"
	"github.com/dropshipd/dropship/lock"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// counted counts the requests made through it and the bytes Consul
// answered with.
type counted struct {
	base      http.RoundTripper
	req, recv atomic.Int64
}

func (c *counted) RoundTrip(r *http.Request) (*http.Response, error) {
	c.req.Add(1)
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.recv.Add(int64(len(b)))
		resp.Body = io.NopCloser(&byteReader{b: b})
	}
	return resp, err
}

type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// countedFleet is newFleet with a client whose requests are counted.
func countedFleet(t *testing.T, prefix, node string) (*Fleet, *counted) {
	t.Helper()
	cnt := &counted{base: http.DefaultTransport.(*http.Transport).Clone()}
	c, err := api.NewClient(&api.Config{Address: servers.Consul(t).Addr, HttpClient: &http.Client{Transport: cnt}})
	if err != nil {
		t.Fatal(err)
	}
	return &Fleet{Client: c, Prefix: prefix, Node: node, SessionTTL: 10 * time.Second}, cnt
}

// A host's read of its records brings the coordinator's document, the
// release asked for, the coordinator's key and its own wave along: the
// rollout's look that follows makes no request of its own, and one that
// comes later reads afresh.
func TestBriefAlongServesTheRolloutsLook(t *testing.T) {
	ctx := context.Background()
	prefix := "test/" + testutil.Unique(t)
	f, cnt := countedFleet(t, prefix, "host-1")
	kv := f.Client.KV()
	// A coordinator's keys, as one writes them: its lock, the document
	// held by its session, and this host's wave.
	sess, _, err := f.Client.Session().Create(&api.SessionEntry{TTL: "30s", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Client.Session().Destroy(sess, nil) })
	doc, _ := json.Marshal(lock.Rollout{Checksum: "sum1", Waves: []lock.WaveState{{Name: "canary", Open: true, Hosts: 1}}})
	place, _ := json.Marshal(lockconsul.Placement{Checksum: "sum1", Wave: "canary"})
	rel, _ := json.Marshal(lockconsul.Placement{Checksum: "sum1"})
	for _, p := range []*api.KVPair{
		{Key: lockconsul.CoordKey(prefix, "app"), Value: []byte(`{}`), Session: sess},
		{Key: lockconsul.RolloutKey(prefix, "app"), Value: doc, Session: sess},
	} {
		if ok, _, err := kv.Acquire(p, nil); err != nil || !ok {
			t.Fatalf("acquire %s: %v %v", p.Key, ok, err)
		}
	}
	for _, p := range []*api.KVPair{
		{Key: lockconsul.WaveKey(prefix, "app", "host-1"), Value: place},
		{Key: lockconsul.WaveKey(prefix, "app", "host-10"), Value: []byte(`{"checksum":"sum1","wave":"other"}`)},
		{Key: lockconsul.ReleaseKey(prefix, "app"), Value: rel},
	} {
		if _, err := kv.Put(p, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Report(ctx, "app", fleet.NodeStatus{Node: "host-1", Result: "registered", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	if err := f.Hold(ctx, "app", fleet.Hold{Who: "ops", Reason: "a test", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	s := lockconsul.New(f.Client, prefix, "app", "host-1", 10*time.Second, 1)
	defer s.Close()
	cnt.req.Store(0)
	st, err := f.BriefAlong(ctx, "app", "host-1", s)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Node != "host-1" || st.Hold == nil {
		t.Fatalf("records: %+v", st)
	}
	got, wave, err := s.Rollout(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	if n := cnt.req.Load(); n != 1 {
		t.Fatalf("%d requests for the records and the rollout's look, want 1", n)
	}
	if got == nil || got.Checksum != "sum1" || wave != "canary" {
		t.Fatalf("rollout %+v, wave %q", got, wave)
	}
	// Taken once: the next look reads again.
	if _, wave, err = s.Rollout(ctx, "sum1"); err != nil || wave != "canary" {
		t.Fatalf("second look: wave %q, %v", wave, err)
	}
	if n := cnt.req.Load(); n != 2 {
		t.Fatalf("%d requests after a second look, want 2", n)
	}
}

// When a wave's last host is done, the coordinator decides from the
// records that can have changed (PlanSoon): the hosts of the open waves
// and the operators' records, not every host's. It decides as a full
// read would; a hold written meanwhile is seen; a rollout is said done
// only from a full read, which sees a host registered since.
func TestPlanSoonDecidesFromTheHostsOfOpenWaves(t *testing.T) {
	ctx := context.Background()
	prefix := "test/" + testutil.Unique(t)
	const n = 40
	policy := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{{Percent: 10}, {Percent: 100}}, MaxFailed: 1, OnFailure: rollout.OnFailureStop}
	fleets := make([]*Fleet, n+1)
	for i := range fleets {
		fleets[i], _ = countedFleet(t, prefix, fmt.Sprintf("host-%02d", i))
	}
	report := func(i int, sum, result string) {
		t.Helper()
		if err := fleets[i].Report(ctx, "app", fleet.NodeStatus{Node: fleets[i].Node, Checksum: sum, Result: result,
			Time: time.Now().UTC(), Policy: policy.Hash()}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		report(i, "", "registered")
	}
	rec, cnt := countedFleet(t, prefix, "host-00")
	c := &rollout.Coordinator{Service: "app", Node: "host-00", Decider: rollout.NewDecider(policy), Records: rec}
	cnt.recv.Store(0)
	doc, waves, err := c.Plan(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	full := cnt.recv.Load()
	if len(doc.Waves) != 3 || !doc.Waves[0].Open || doc.Waves[1].Open || len(waves) != n {
		t.Fatalf("first decision: %+v (%d hosts placed)", doc, len(waves))
	}
	in := map[string][]int{}
	for i := range n {
		in[waves[fleets[i].Node]] = append(in[waves[fleets[i].Node]], i)
	}
	canary, first := doc.Waves[0].Name, doc.Waves[1].Name
	report(in[canary][0], "sum1", "installed")
	cnt.recv.Store(0)
	soon, _, err := c.PlanSoon(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	if part := cnt.recv.Load(); part*4 > full {
		t.Fatalf("PlanSoon read %d bytes, a full read %d: not the open waves' hosts alone", part, full)
	}
	again, _, err := c.Plan(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	if soon.ActState() != again.ActState() || !soon.Wave(first).Open {
		t.Fatalf("PlanSoon decided %s, a full read %s", soon.ActState(), again.ActState())
	}
	// A hold written mid-wave is in the next decision, however made.
	if err := rec.Hold(ctx, "app", fleet.Hold{Who: "ops", Reason: "a test", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	if soon, _, err = c.PlanSoon(ctx, "sum1"); err != nil || soon.Hold == "" {
		t.Fatalf("after a hold: %+v, %v", soon, err)
	}
	if err := rec.Resume(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	// The first wave done, read in full: the last wave opens.
	for _, i := range in[first] {
		report(i, "sum1", "installed")
	}
	if doc, _, err = c.Plan(ctx, "sum1"); err != nil || !doc.Waves[2].Open {
		t.Fatalf("after the first wave: %+v, %v", doc, err)
	}
	// Every planned host done, and one registered since the last full
	// read: the rollout is not done.
	report(n, "", "registered")
	for i := range n {
		report(i, "sum1", "installed")
	}
	soon, waves, err = c.PlanSoon(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	if soon.Done || waves[fleets[n].Node] == "" {
		t.Fatalf("done with host %s unplaced or not installed: %+v", fleets[n].Node, soon)
	}
}

// A host forgotten (its record deleted, `dropship fleet forget`) is gone
// from the decisions PlanSoon makes as from a full read: its failure,
// read before, no longer counts towards max_failed (no breaker tripped
// by a record that is no longer there).
func TestPlanSoonForgetsAHostForgotten(t *testing.T) {
	ctx := context.Background()
	prefix := "test/" + testutil.Unique(t)
	const n = 40
	policy := &rollout.Policy{Canary: 1, Waves: []rollout.Wave{{Percent: 10}, {Percent: 100}}, MaxFailed: 2, OnFailure: rollout.OnFailureStop}
	fleets := make([]*Fleet, n)
	for i := range fleets {
		fleets[i], _ = countedFleet(t, prefix, fmt.Sprintf("host-%02d", i))
	}
	report := func(i int, sum, result string) {
		t.Helper()
		ns := fleet.NodeStatus{Node: fleets[i].Node, Checksum: sum, Result: result, Time: time.Now().UTC(), Policy: policy.Hash()}
		if result == "failed" {
			ns.Checksum, ns.Attempt, ns.Counted = "", "sum1", true
		}
		if err := fleets[i].Report(ctx, "app", ns); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		report(i, "", "registered")
	}
	rec, _ := countedFleet(t, prefix, "host-00")
	c := &rollout.Coordinator{Service: "app", Node: "host-00", Decider: rollout.NewDecider(policy), Records: rec}
	doc, waves, err := c.Plan(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	in := map[string][]int{}
	for i := range n {
		in[waves[fleets[i].Node]] = append(in[waves[fleets[i].Node]], i)
	}
	canary, first := doc.Waves[0].Name, doc.Waves[1].Name
	report(in[canary][0], "sum1", "installed")
	if doc, _, err = c.PlanSoon(ctx, "sum1"); err != nil || !doc.Wave(first).Open {
		t.Fatalf("after the canary: %+v, %v", doc, err)
	}
	// A host of the first wave fails, and is decided on; then it is
	// forgotten, and another fails.
	report(in[first][0], "", "failed")
	if doc, _, err = c.PlanSoon(ctx, "sum1"); err != nil || doc.Trip != "" {
		t.Fatalf("after one failure: %+v, %v", doc, err)
	}
	if ok, err := rec.Forget(ctx, "app", fleets[in[first][0]].Node); err != nil || !ok {
		t.Fatalf("forget: %v, %v", ok, err)
	}
	report(in[first][1], "", "failed")
	soon, _, err := c.PlanSoon(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	full, _, err := c.Plan(ctx, "sum1")
	if err != nil {
		t.Fatal(err)
	}
	if soon.Trip != full.Trip || soon.ActState() != full.ActState() {
		t.Fatalf("PlanSoon decided %s (trip %q), a full read %s (trip %q)", soon.ActState(), soon.Trip, full.ActState(), full.Trip)
	}
}

// TestALookReadsItsOwnKeysNotItsNamesakes: a host's look reads its own
// record and wave, not those of every host whose name starts with its
// own (web-1 against web-10 to web-1299): what it reads does not grow
// with the fleet. A host with no record or wave yet reads none.
func TestALookReadsItsOwnKeysNotItsNamesakes(t *testing.T) {
	ctx := context.Background()
	prefix := "test/" + testutil.Unique(t)
	f, cnt := countedFleet(t, prefix, "web-1")
	kv := f.Client.KV()
	pad := strings.Repeat("x", 400)
	var ops api.TxnOps
	flush := func() {
		if ok, resp, _, err := f.Client.Txn().Txn(ops, nil); err != nil || !ok {
			t.Fatalf("write: %v %v", err, resp)
		}
		ops = nil
	}
	for i := 10; i < 1300; i++ {
		node := fmt.Sprintf("web-1%d", i)
		rec, _ := json.Marshal(fleet.NodeStatus{Node: node, Result: "ok", Error: pad, Time: time.Now().UTC()})
		place, _ := json.Marshal(lockconsul.Placement{Checksum: "sum1", Wave: "100%"})
		ops = append(ops,
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: fleet.NodesKey(prefix, "app") + node, Value: rec}},
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: lockconsul.WaveKey(prefix, "app", node), Value: place}})
		if len(ops) >= 64 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
	// A coordinator's lock and document, as in a rollout of sum1.
	sess, _, err := f.Client.Session().Create(&api.SessionEntry{TTL: "30s", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Client.Session().Destroy(sess, nil) })
	doc, _ := json.Marshal(lock.Rollout{Checksum: "sum1", Waves: []lock.WaveState{{Name: "canary", Open: true, Hosts: 1}}})
	for _, p := range []*api.KVPair{
		{Key: lockconsul.CoordKey(prefix, "app"), Value: []byte(`{}`), Session: sess},
		{Key: lockconsul.RolloutKey(prefix, "app"), Value: doc, Session: sess},
	} {
		if ok, _, err := kv.Acquire(p, nil); err != nil || !ok {
			t.Fatalf("acquire %s: %v %v", p.Key, ok, err)
		}
	}
	s := lockconsul.New(f.Client, prefix, "app", "web-1", 10*time.Second, 1)
	defer s.Close()
	look := func() (fleet.Status, string) {
		t.Helper()
		cnt.recv.Store(0)
		st, err := f.BriefAlong(ctx, "app", "web-1", s)
		if err != nil {
			t.Fatal(err)
		}
		_, wave, err := s.Rollout(ctx, "sum1")
		if err != nil {
			t.Fatal(err)
		}
		return st, wave
	}
	// Nothing of web-1's own yet.
	st, wave := look()
	if len(st.Nodes) != 0 || wave != "" {
		t.Fatalf("web-1 has no record and no wave, read %d records and wave %q", len(st.Nodes), wave)
	}
	if n := cnt.recv.Load(); n > 8<<10 {
		t.Fatalf("a look with no record of its own read %d bytes from Consul (1,290 namesakes of ~500 bytes each), want under 8 KiB", n)
	}
	// Its own record and wave are read, and only they.
	if err := f.Report(ctx, "app", fleet.NodeStatus{Node: "web-1", Result: "registered", Time: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	place, _ := json.Marshal(lockconsul.Placement{Checksum: "sum1", Wave: "canary"})
	if _, err := kv.Put(&api.KVPair{Key: lockconsul.WaveKey(prefix, "app", "web-1"), Value: place}, nil); err != nil {
		t.Fatal(err)
	}
	st, wave = look()
	if len(st.Nodes) != 1 || st.Nodes[0].Node != "web-1" || wave != "canary" {
		t.Fatalf("records %+v, wave %q", st.Nodes, wave)
	}
	if n := cnt.recv.Load(); n > 8<<10 {
		t.Fatalf("a look read %d bytes from Consul, want under 8 KiB", n)
	}
	// The coordinator's read of a few hosts' records reads those.
	cnt.recv.Store(0)
	rs, err := f.RecordsOf(ctx, "app", []string{"web-1", "web-2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Nodes) != 1 || rs.Nodes[0].Node != "web-1" {
		t.Fatalf("RecordsOf: %+v", rs.Nodes)
	}
	if n := cnt.recv.Load(); n > 8<<10 {
		t.Fatalf("RecordsOf of 2 hosts read %d bytes from Consul, want under 8 KiB", n)
	}
}
