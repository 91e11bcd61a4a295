package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A token that may write the whole prefix but not the operators' folder
// of the audit log (kept from the agents) passes the reports' probe, so
// its host checks the trim on one report in trimSlack only, counting on
// its trims to delete every writer's events. When its turn comes, it
// deletes all the old events it may, the other hosts' too, not its own
// only: else those of hosts yet to take their turn (about trimSlack
// each) pile up past the log's bound.
func TestATrimKeptFromSomeFoldersDeletesTheOthersItMay(t *testing.T) {
	ctx := context.Background()
	acl := servers.ACLConsul(t)
	admin := acl.Admin(t)
	prefix := "test/" + testutil.Unique(t)
	const hosts, opsEvents = 10, 5
	rules := fmt.Sprintf(`key_prefix %q { policy = "write" }
key_prefix %q { policy = "read" }`, prefix+"/", fleet.AuditKey(prefix, "app")+"ops/")
	p := &Fleet{Client: acl.TokenClient(t, "all-but-ops", rules), Prefix: prefix, Node: "host-0",
		SessionTTL: 10 * time.Second, scope: new(atomic.Int32), trimOdds: 1}
	// The rollouts before: the log full, the operators' events oldest,
	// then the other hosts'.
	var ops api.TxnOps
	base := time.Now().Add(-time.Hour)
	for i := range fleet.MaxEvents + trimSlack {
		node := "ops"
		if i >= opsEvents {
			node = fmt.Sprint("host-", 1+i%(hosts-1))
		}
		ev := fleet.Event{Kind: fleet.EventInstall, Who: node, Via: "agent", Node: node, Checksum: fmt.Sprint("old-", i)}
		b, _ := json.Marshal(ev)
		key := fmt.Sprintf("%s%s/%020d-%08x", fleet.AuditKey(prefix, "app"), node, base.Add(time.Duration(i)*time.Millisecond).UnixNano(), i)
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: b}})
		if len(ops) == 64 || i == opsEvents-1 || i == fleet.MaxEvents+trimSlack-1 {
			if ok, resp, _, err := admin.Txn().Txn(ops, nil); err != nil || !ok {
				t.Fatalf("fill the log: %v %s", err, txnErrors(resp.Errors))
			}
			ops = nil
		}
	}
	ns := fleet.NodeStatus{Node: p.Node, Checksum: "new", Attempt: "new", Result: "installed", Time: time.Now().UTC()}
	if err := p.ReportEvents(ctx, "app", ns, fleet.OutcomeEvents(ns)); err != nil {
		t.Fatal(err)
	}
	keys, _, err := admin.KV().Keys(fleet.AuditKey(prefix, "app"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	opsLeft := 0
	for _, k := range keys {
		if strings.HasPrefix(k, fleet.AuditKey(prefix, "app")+"ops/") {
			opsLeft++
		}
	}
	if opsLeft != opsEvents || len(keys) != fleet.MaxEvents+opsEvents {
		t.Fatalf("after a trim the audit log holds %d events, %d of them the operators': want the newest %d and the operators' %d",
			len(keys), opsLeft, fleet.MaxEvents, opsEvents)
	}
}
