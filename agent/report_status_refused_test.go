package agent_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/agent"
	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/fleet/consul"
	"github.com/dropshipd/dropship/internal/rig"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// A host whose token may append to the audit log but not write its node
// record: a deferral's event is written once, as with any fleet, not
// again at every look (once a second by default, which would push every
// other event out of the log).
func TestDeferralWhoseStatusIsRefusedIsLoggedOnce(t *testing.T) {
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
	prefix := "test/" + testutil.Unique(t)
	var rules []string
	for rule := range strings.SplitSeq(consul.AgentPolicy(prefix, "test-node", "", []string{"app"}), "}\n") {
		if !strings.Contains(rule, "/nodes/") {
			rules = append(rules, rule)
		}
	}
	pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "no-node-record", Rules: strings.Join(rules, "}\n")}, nil)
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
	ff := &consul.Fleet{Client: client, Prefix: prefix, Node: "test-node", SessionTTL: 10 * time.Second}

	e := newEnv(t)
	lock := filepath.Join(e.dir, "busy.lock")
	cfg := e.deferConfig(ff, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, lock))
	var logs bytes.Buffer
	r, err := agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	holdLock(t, lock)
	e.publish("v2")
	e.check(r, agent.ResultDeferred)
	e.check(r, agent.ResultDeferred)
	e.check(r, agent.ResultDeferred)
	evs, _, err := (&consul.Fleet{Client: admin, Prefix: prefix}).Log(t.Context(), "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, ev := range evs {
		got[ev.Kind]++
	}
	if got[fleet.EventInstall] != 1 || got[fleet.EventDefer] != 1 {
		t.Fatalf("audit log %v, want the install and the deferral once each\n%s", got, logs.String())
	}
}
