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
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// refusedHost is a host of the package's ACL Consul whose token has the
// agent's policy (consul.AgentPolicy) but for its rules on the keys that
// hold refused, and the runner of a service there that defers while its
// lock file is held, logging to logs.
type refusedHost struct {
	*env
	runner *agent.Runner
	lock   string
	logs   bytes.Buffer
	admin  *api.Client // of the management token
	prefix string
}

func newRefusedHost(t *testing.T, policy, refused string) *refusedHost {
	t.Helper()
	acl := servers.ACLConsul(t)
	h := &refusedHost{env: newEnv(t), admin: acl.Admin(t), prefix: "test/" + testutil.Unique(t)}
	var rules []string
	all := consul.AgentPolicy(h.prefix, "test-node", "", []string{"app"})
	for rule := range strings.SplitSeq(all, "}\n") {
		if !strings.Contains(rule, refused) {
			rules = append(rules, rule)
		}
	}
	if len(rules) == strings.Count(all, "}\n")+1 {
		t.Fatalf("no rule of the agent's policy is on keys holding %q:\n%s", refused, all)
	}
	client := acl.TokenClient(t, policy, strings.Join(rules, "}\n"))
	ff := &consul.Fleet{Client: client, Prefix: h.prefix, Node: "test-node", SessionTTL: 10 * time.Second}
	h.lock = filepath.Join(h.dir, "busy.lock")
	cfg := h.deferConfig(ff, fmt.Sprintf(`defer {
    lock_file = %q
    interval  = "100ms"
  }`, h.lock))
	var err error
	if h.runner, err = agent.NewRunner(cfg, cfg.Services[0], slog.New(slog.NewTextHandler(&h.logs, nil))); err != nil {
		t.Fatal(err)
	}
	return h
}

// A host whose token may write its node record but not the audit log (an
// agent policy from before the log): each outcome's status is written and
// its lost event logged as such, and a deferral is told once, as with
// any fleet, not again at every look.
func TestStatusWithoutItsEventsIsStillReported(t *testing.T) {
	e := newRefusedHost(t, "no-audit-log", "/audit/")
	r, admin, prefix, lock := e.runner, e.admin, e.prefix, e.lock
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
	for l := range strings.Lines(e.logs.String()) {
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
		t.Errorf("lost events logged %v, want the install and the defer once each\n%s", lost, e.logs.String())
	}
}
