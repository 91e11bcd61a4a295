package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A token that may append to the audit log (and trim it) but not write
// the host's status: Consul refuses the one transaction, the status is
// not written, and the outcome's events still are, as each was recorded
// on its own before the status.
func TestReportEventsRecordsTheEventsWhenTheStatusIsRefused(t *testing.T) {
	acl := servers.ACLConsul(t)
	admin := acl.Admin(t)
	prefix := "test/" + testutil.Unique(t)
	client := acl.TokenClient(t, "log-only", fmt.Sprintf(`key_prefix %q { policy = "read" }
key_prefix %q { policy = "write" }`, prefix+"/", fleet.AuditKey(prefix, "app")))
	p := &Fleet{Client: client, Prefix: prefix, Node: "web-1", SessionTTL: 10 * time.Second, scope: new(atomic.Int32)}
	ns := fleet.NodeStatus{Node: "web-1", Checksum: "old", Attempt: "new", Result: "failed", Phase: "check", Error: "check failed"}
	err := p.ReportEvents(context.Background(), "app", ns, fleet.OutcomeEvents(ns))
	if err == nil || errors.Is(err, fleet.ErrStatusWritten) || !errors.Is(err, fleet.ErrEventsWritten) || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("error %v, want the status's refusal, the events written", err)
	}
	if kv, _, err := admin.KV().Get(fleet.NodesKey(prefix, "app")+"web-1", nil); err != nil || kv != nil {
		t.Fatalf("node record %+v (%v): want none", kv, err)
	}
	evs, _, err := (&Fleet{Client: admin, Prefix: prefix}).Log(context.Background(), "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != fleet.EventFailure || evs[1].Kind != fleet.EventRollback {
		t.Fatalf("log %+v, want the failure and the switch back", evs)
	}
}
