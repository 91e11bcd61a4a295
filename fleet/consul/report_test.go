package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A host's status and the events of its outcome are one transaction:
// whoever reads the status finds the events, and no reader sees one
// without the other.
func TestReportEventsWritesTheStatusAndItsEventsAtOnce(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "web-1")
	ns := fleet.NodeStatus{Node: "web-1", Checksum: "old", Attempt: "new", Result: "failed", Phase: "check", Error: "check failed"}
	if err := p.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
		t.Fatal(err)
	}
	kv, _, err := p.Client.KV().Get(fleet.NodesKey(p.Prefix, "app")+"web-1", nil)
	if err != nil || kv == nil {
		t.Fatalf("no node record: %v", err)
	}
	evs, _, err := p.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != fleet.EventFailure || evs[1].Kind != fleet.EventRollback {
		t.Fatalf("log %+v, want the failure and the switch back", evs)
	}
	for _, ev := range evs {
		if ev.Index != kv.ModifyIndex {
			t.Fatalf("event %s written at index %d, the status at %d: not one transaction", ev.Kind, ev.Index, kv.ModifyIndex)
		}
	}
}

// Every host of a rollout reports at its end: N hosts must not list the
// audit log's keys (up to MaxEvents of them) N times. A report checks
// the trim once in trimCheck, at random.
func TestReportsCheckTheAuditLogsTrimOnceInTrimCheck(t *testing.T) {
	ctx := context.Background()
	p, cnt := countedFleet(t, "test/"+testutil.Unique(t), "host-0")
	const hosts = 4 * trimCheck
	for i := range hosts {
		h := *p
		h.Node = fmt.Sprint("host-", i)
		ns := fleet.NodeStatus{Node: h.Node, Checksum: "a", Attempt: "a", Result: "installed"}
		if err := h.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
			t.Fatal(err)
		}
	}
	// One transaction each, and the lists of the log's keys: 4 expected
	// (hosts / trimCheck); more than 16 has odds below one in a million.
	if listed := cnt.req.Load() - hosts; listed > 4*hosts/trimCheck {
		t.Fatalf("%d hosts' reports listed the audit log %d times, want about %d", hosts, listed, hosts/trimCheck)
	}
	evs, _, err := p.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != hosts {
		t.Fatalf("%d events in the log, want %d", len(evs), hosts)
	}
}

// A report whose turn it is trims the log to its newest MaxEvents.
func TestReportEventsTrimsTheLogWhenDue(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "host-0")
	p.trimOdds = 1
	base := time.Now().Add(-time.Hour)
	const over = fleet.MaxEvents + trimSlack + 5
	for i := range over {
		key := fmt.Sprintf("%s%020d-old-%d", p.auditFolder("app"), base.Add(time.Duration(i)*time.Millisecond).UnixNano(), i)
		if _, err := p.Client.KV().Put(&api.KVPair{Key: key, Value: fmt.Appendf(nil, `{"kind":"install","checksum":"%d"}`, i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	ns := fleet.NodeStatus{Node: "host-0", Checksum: "new", Attempt: "new", Result: "installed"}
	if err := p.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
		t.Fatal(err)
	}
	evs, _, err := p.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	keys, _, err := p.Client.KV().Keys(fleet.AuditKey(p.Prefix, "app"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != fleet.MaxEvents || evs[len(evs)-1].Checksum != "new" || evs[0].Checksum != fmt.Sprint(over+1-fleet.MaxEvents) {
		t.Fatalf("%d events stored, oldest %q, newest %q: want the newest %d, ours last", len(keys), evs[0].Checksum, evs[len(evs)-1].Checksum, fleet.MaxEvents)
	}
}

// A token that may write the host's status but not the audit log (a
// policy from before the log, edited by hand): Consul refuses the one
// transaction, and the status is still written, the lost events named.
func TestReportEventsWritesTheStatusWhenTheLogIsRefused(t *testing.T) {
	acl := servers.ACLConsul(t)
	admin := acl.Admin(t)
	prefix := "test/" + testutil.Unique(t)
	nodeKey := fleet.NodesKey(prefix, "app") + "web-1"
	client := acl.TokenClient(t, "status-only", fmt.Sprintf(`key %q { policy = "write" }`, nodeKey))
	p := &Fleet{Client: client, Prefix: prefix, Node: "web-1", SessionTTL: 10 * time.Second}
	ns := fleet.NodeStatus{Node: "web-1", Checksum: "a", Attempt: "a", Result: "installed"}
	err := p.ReportEvents(context.Background(), "app", ns, fleet.OutcomeEvents(ns))
	if err == nil || !strings.Contains(err.Error(), "record install event of app") || !errors.Is(err, fleet.ErrStatusWritten) {
		t.Fatalf("error %v, want the install event's loss named, the status written", err)
	}
	if strings.Contains(err.Error(), "[0x") || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("error %v: the refused transaction's reason is not told", err)
	}
	kv, _, err := admin.KV().Get(nodeKey, nil)
	if err != nil || kv == nil || !strings.Contains(string(kv.Value), `"installed"`) {
		t.Fatalf("the status was not written: %v %+v", err, kv)
	}
}

// cutAfterTxn is a connection to Consul that breaks once a transaction
// has gone through: what a host sees when Consul goes away between its
// report and the trim that follows.
type cutAfterTxn struct {
	base http.RoundTripper
	cut  atomic.Bool
}

func (c *cutAfterTxn) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.cut.Load() {
		return nil, errors.New("connection refused")
	}
	resp, err := c.base.RoundTrip(r)
	if strings.HasSuffix(r.URL.Path, "/v1/txn") {
		c.cut.Store(true)
	}
	return resp, err
}

// A trim that fails after the report went through is no lost report: the
// error says the status was written, and the status and event are there.
func TestReportEventsWhoseTrimFailsSaysTheStatusWasWritten(t *testing.T) {
	ctx := context.Background()
	p := newFleet(t, "web-1")
	p.trimOdds = 1
	cut := &cutAfterTxn{base: http.DefaultTransport.(*http.Transport).Clone()}
	client, err := api.NewClient(&api.Config{Address: servers.Consul(t).Addr, HttpClient: &http.Client{Transport: cut}})
	if err != nil {
		t.Fatal(err)
	}
	reporter := *p
	reporter.Client = client
	ns := fleet.NodeStatus{Node: "web-1", Checksum: "a", Attempt: "a", Result: "installed", Time: time.Now().UTC()}
	err = reporter.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns))
	if err == nil || !errors.Is(err, fleet.ErrStatusWritten) {
		t.Fatalf("error %v, want the status said written", err)
	}
	evs, _, err := p.Log(ctx, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if kv, _, err := p.Client.KV().Get(fleet.NodesKey(p.Prefix, "app")+"web-1", nil); err != nil || kv == nil || len(evs) != 1 {
		t.Fatalf("node record %v (%v), events %+v: want both written", kv, err, evs)
	}
}

// fillLog writes n install events to the audit log of app under prefix,
// oldest first, the i-th in writer(i)'s folder, in transactions of up to
// 64 operations; with older > 0 the first older events have one of their
// own (an older index than the rest).
func fillLog(t *testing.T, admin *api.Client, prefix string, n int, writer func(i int) string, older int) {
	t.Helper()
	var ops api.TxnOps
	base := time.Now().Add(-time.Hour)
	for i := range n {
		node := writer(i)
		ev := fleet.Event{Kind: fleet.EventInstall, Who: node, Via: "agent", Node: node, Checksum: fmt.Sprint("old-", i)}
		b, _ := json.Marshal(ev)
		key := fmt.Sprintf("%s%s/%020d-%08x", fleet.AuditKey(prefix, "app"), node, base.Add(time.Duration(i)*time.Millisecond).UnixNano(), i)
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: b}})
		if len(ops) == 64 || i == older-1 || i == n-1 {
			if ok, resp, _, err := admin.Txn().Txn(ops, nil); err != nil || !ok {
				t.Fatalf("fill the log: %v %s", err, txnErrors(resp.Errors))
			}
			ops = nil
		}
	}
}
