package consul

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A token that may write the whole prefix but not the operators' folder
// of the audit log (kept from the agents) passes the reports' probe, so
// its host checks the trim on one report in trimCheck only, counting on
// its trims to delete every writer's events. When its turn comes, it
// deletes all the old events it may, the other hosts' too, not its own
// only: else those of hosts yet to take their turn (about trimCheck
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
	fillLog(t, admin, prefix, fleet.MaxEvents+trimSlack, func(i int) string {
		if i < opsEvents {
			return "ops"
		}
		return fmt.Sprint("host-", 1+i%(hosts-1))
	}, opsEvents)
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
