package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// aclConsul starts a Consul with ACLs on (deny by default) and returns a
// client of its management token.
func aclConsul(t *testing.T) (*rig.Consul, *api.Client) {
	t.Helper()
	root := "00000000-0000-4000-8000-" + fmt.Sprintf("%012d", time.Now().UnixNano()%1e12)
	c, err := rig.StartConsul("-hcl", fmt.Sprintf(`acl { enabled = true
default_policy = "deny"
tokens { initial_management = %q } }`, root))
	testutil.RequireServer(t, "Consul", err)
	t.Cleanup(c.Stop)
	admin, err := api.NewClient(&api.Config{Address: c.Addr, Token: root})
	if err != nil {
		t.Fatal(err)
	}
	return c, admin
}

// tokenClient is a client of a new token with rules.
func tokenClient(t *testing.T, c *rig.Consul, admin *api.Client, name, rules string) *api.Client {
	t.Helper()
	pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := api.NewClient(&api.Config{Address: c.Addr, Token: tok.SecretID})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// A token that may append to the audit log (and trim it) but not write
// the host's status: Consul refuses the one transaction, the status is
// not written, and the outcome's events still are, as each was recorded
// on its own before the status.
func TestReportEventsRecordsTheEventsWhenTheStatusIsRefused(t *testing.T) {
	c, admin := aclConsul(t)
	prefix := "test/" + testutil.Unique(t)
	client := tokenClient(t, c, admin, "log-only", fmt.Sprintf(`key_prefix %q { policy = "read" }
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
