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

// A host whose token may write its node record but not the audit log (an
// agent policy from before the log): each outcome's status is written and
// its lost event logged as such, and a deferral is told once, as with
// any fleet, not again at every look.
func TestStatusWithoutItsEventsIsStillReported(t *testing.T) {
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
		if !strings.Contains(rule, "/audit/") {
			rules = append(rules, rule)
		}
	}
	pol, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "no-audit-log", Rules: strings.Join(rules, "}\n")}, nil)
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
	nodeKey := fleet.NodesKey(prefix, "app") + "test-node"
	record := func() *api.KVPair {
		t.Helper()
		kv, _, err := admin.KV().Get(nodeKey, nil)
		if err != nil || kv == nil {
			t.Fatalf("no node record: %v", err)
		}
		return kv
	}
	e.publish("v1")
	e.check(r, agent.ResultInstalled)
	if rec := record(); !strings.Contains(string(rec.Value), `"installed"`) {
		t.Fatalf("node record %s", rec.Value)
	}

	holdLock(t, lock)
	e.publish("v2")
	e.check(r, agent.ResultDeferred)
	told := record()
	if !strings.Contains(string(told.Value), `"deferred"`) {
		t.Fatalf("node record %s", told.Value)
	}
	e.check(r, agent.ResultDeferred)
	if again := record(); again.ModifyIndex != told.ModifyIndex {
		t.Errorf("the deferral was told again at the next look (node record index %d, then %d)", told.ModifyIndex, again.ModifyIndex)
	}
	lost := map[string]int{}
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "could not report node status") {
			t.Errorf("the status was written, the log says not: %s", l)
		}
		if strings.Contains(l, "could not record the event in the audit log") && strings.Contains(l, "level=WARN") {
			for _, kind := range []string{fleet.EventInstall, fleet.EventDefer} {
				if strings.Contains(l, "kind="+kind) {
					lost[kind]++
				}
			}
		}
	}
	if lost[fleet.EventInstall] != 1 || lost[fleet.EventDefer] != 1 {
		t.Errorf("lost events logged %v, want the install and the defer once each\n%s", lost, logs.String())
	}
}
