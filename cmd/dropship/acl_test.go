package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/dropshipd/dropship/fleet"
	"github.com/dropshipd/dropship/internal/rig/testutil"
)

// aclFleet is a fleet of one host on the package's Consul whose ACLs deny
// by default: the host's agent has the token of the policy `fleet
// acl-policy agent` prints for it, and ops.hcl (the same config) the
// operators' token.
type aclFleet struct {
	*fleetRig
	admin, agent *api.Client
	operator     *api.Client // with the operators' token
	ops          string      // config with the operators' token
}

func newACLFleet(t *testing.T, lockExtra string) *aclFleet {
	acl := servers.ACLConsul(t)
	admin := acl.Admin(t)
	consulNode, err := admin.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	f := &aclFleet{fleetRig: newFleet(t, 1, 1, acl.Consul, `rollout {
    waves = ["100%"]
  }`), admin: admin}
	// A fresh fleet, also when a test runs again (-count): newFleet's
	// client, without a token, may delete nothing.
	if _, err := admin.KV().DeleteTree(f.prefix+"/", nil); err != nil {
		t.Fatal(err)
	}
	h := f.hosts[0]
	token := func(kind string, extra ...string) string {
		rules, errOut, code := run(t, append([]string{"fleet", "acl-policy", kind, "-c", h.cfg}, extra...)...)
		if code != 0 {
			t.Fatalf("fleet acl-policy %s: exit %d\n%s", kind, code, errOut)
		}
		return acl.Token(t, "dropship-"+kind, rules)
	}
	agentToken := token("agent", "--consul-node", consulNode)
	opsToken := token("operator")
	f.agent, f.operator = acl.Client(t, agentToken), acl.Client(t, opsToken)
	cfg, err := os.ReadFile(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	with := func(tok string) []byte {
		return []byte(strings.Replace(string(cfg), `session_ttl = "10s"`, fmt.Sprintf("session_ttl = \"10s\"\n  token = %q\n%s", tok, lockExtra), 1))
	}
	f.ops = filepath.Join(f.dir, "ops.hcl")
	// The operators run the CLI on a desk of their own.
	testutil.WriteFile(t, f.ops, []byte(strings.Replace(string(with(opsToken)), `node_name  = "host-0"`, `node_name  = "ops-desk"`, 1)))
	testutil.WriteFile(t, h.cfg, with(agentToken))
	return f
}

// once runs the host's agent once and returns its output.
func (f *aclFleet) once() string {
	f.t.Helper()
	out, errOut, code := run(f.t, "agent", "--once", "-c", f.hosts[0].cfg)
	if code != 0 {
		f.t.Fatalf("agent --once: exit %d\n%s%s", code, out, errOut)
	}
	return out + errOut
}

// One compromised host, with the token of the policy `fleet acl-policy
// agent` prints for it: its agent still deploys (slots, its node record,
// the audit log, the rollout's plan), but the token cannot write another
// host's record, approvals, freezes, pins, holds, clears or announcements,
// nor delete the audit log or the operators' events in it.
func TestAgentTokenCannotSteerTheFleet(t *testing.T) {
	t.Parallel()
	f := newACLFleet(t, "")
	h := f.hosts[0]
	// The operators' token acts, and its event is in the log.
	if out, errOut, code := run(t, "fleet", "freeze", "app", "--reason", "first", "-c", f.ops); code != 0 {
		t.Fatalf("freeze with the operators' token: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := run(t, "fleet", "unfreeze", "app", "-c", f.ops); code != 0 {
		t.Fatalf("unfreeze: exit %d\n%s%s", code, out, errOut)
	}

	f.publish("v1", false)
	if log := f.once(); h.version() != "v1" {
		t.Fatalf("the agent with its least-privilege token did not deploy v1:\n%s", log)
	}
	audit := fleet.AuditKey(f.prefix, "app")
	evs, _, err := f.admin.KV().List(audit, nil)
	if err != nil {
		t.Fatal(err)
	}
	var opsEvent, installed string
	var installedAt uint64
	for _, kv := range evs {
		switch {
		case strings.Contains(string(kv.Value), `"kind":"install"`):
			installed, installedAt = kv.Key, kv.ModifyIndex
		case strings.Contains(string(kv.Value), `"kind":"freeze"`):
			opsEvent = kv.Key
		}
	}
	if installed == "" || opsEvent == "" {
		t.Fatalf("audit log %v: want the install by the agent and the operators' freeze", evs)
	}
	// The token may write the host's status and its event in one
	// transaction (not refused, then written in two steps).
	if rec, _, err := f.admin.KV().Get(fleet.NodesKey(f.prefix, "app")+"host-0", nil); err != nil || rec == nil || rec.ModifyIndex != installedAt {
		t.Fatalf("the node record (%+v, %v) was not written with its install event (index %d)", rec, err, installedAt)
	}

	kv := f.agent.KV()
	rollout := fleet.RolloutKey(f.prefix, "app")
	for _, key := range []string{
		fleet.NodesKey(f.prefix, "app") + "host-1", // another host, forged
		fleet.NodesKey(f.prefix, "app") + "host-00",
		rollout + "approve/" + strings.Repeat("a", 32) + "/1",
		rollout + "freeze",
		rollout + "pins/0123456789abcdef",
		rollout + "cleared/abc",
		fleet.HoldKey(f.prefix, "app"),
		fleet.PublishedPrefix(f.prefix) + "app",
		audit + "host-1/0-forged", // another writer's folder of the log
	} {
		if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(`{"who":"mallory"}`)}, nil); err == nil || !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("the agent's token wrote %s (%v)", key, err)
		}
	}
	for _, del := range []func() error{
		func() error { _, err := kv.DeleteTree(audit, nil); return err },
		func() error { _, err := kv.Delete(opsEvent, nil); return err },
		func() error { _, err := kv.DeleteTree(f.prefix+"/", nil); return err },
	} {
		if err := del(); err == nil || !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("the agent's token deleted the audit log or an operator's event (%v)", err)
		}
	}
	if pair, _, err := f.admin.KV().Get(opsEvent, nil); err != nil || pair == nil {
		t.Fatalf("the operators' event is gone (%v)", err)
	}
	// What it may still do: write its own record and its own events.
	if _, err := kv.Put(&api.KVPair{Key: fleet.NodesKey(f.prefix, "app") + "host-0", Value: []byte(`{"node":"host-0"}`)}, nil); err != nil {
		t.Errorf("the agent's token cannot write its own record: %v", err)
	}

	// And a second release still deploys.
	f.publish("v2", false)
	if log := f.once(); h.version() != "v2" {
		t.Fatalf("the agent did not deploy v2:\n%s", log)
	}
}

// With operator_keys in lock "consul", the agent acts only on operators'
// records signed by one of the keys: a hold written with the operators'
// token but no key is ignored (the agent installs, `fleet status` says
// why), a hold signed with --operator-key stops it, and the audit log
// and the status name the key as who.
func TestAgentActsOnlyOnSignedOperatorRecords(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "alice")
	if out, errOut, code := run(t, "keygen", "--out", key, "--no-password"); code != 0 {
		t.Fatalf("keygen: exit %d\n%s%s", code, out, errOut)
	}
	f := newACLFleet(t, fmt.Sprintf("  operator_keys = { alice = %q }\n", key+".pub"))
	h := f.hosts[0]

	// The CLI refuses to write a hold the agents would ignore (it would
	// look in force and stop nothing).
	if out, errOut, code := run(t, "hold", "app", "--reason", "unsigned", "-c", f.ops); code == 0 || !strings.Contains(errOut, "--operator-key") {
		t.Fatalf("an unsigned hold with operator_keys in the config: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := run(t, "fleet", "status", "app", "-c", h.cfg); strings.Contains(out, "IGNORED hold") || strings.Contains(out, "HOLD since") {
		t.Fatalf("the refused hold was written:\n%s", out)
	}
	// The operators' token without a key (stolen) writes one anyway.
	if _, err := f.operator.KV().Put(&api.KVPair{Key: fleet.HoldKey(f.prefix, "app"), Value: []byte(`{"reason":"unsigned","who":"alice"}`)}, nil); err != nil {
		t.Fatal(err)
	}
	f.publish("v1", false)
	if log := f.once(); h.version() != "v1" {
		t.Fatalf("an unsigned hold stopped the agent:\n%s", log)
	}
	out, errOut, code := run(t, "fleet", "status", "app", "-c", h.cfg)
	if code != 0 || !strings.Contains(out, "IGNORED hold: not signed by an operator key") || strings.Contains(out, "HOLD since") {
		t.Fatalf("fleet status with an unsigned hold: exit %d\n%s%s", code, out, errOut)
	}

	if out, errOut, code := run(t, "hold", "app", "--reason", "signed", "--operator-key", key+".key", "-c", f.ops); code != 0 {
		t.Fatalf("hold --operator-key: exit %d\n%s%s", code, out, errOut)
	}
	f.publish("v2", false)
	if log := f.once(); h.version() != "v1" || !strings.Contains(log, "alice") {
		t.Fatalf("a hold signed by alice did not stop the agent (on %s):\n%s", h.version(), log)
	}
	out, _, _ = run(t, "fleet", "status", "app", "-c", h.cfg)
	if !strings.Contains(out, "by alice: signed") || strings.Contains(out, "IGNORED") {
		t.Errorf("fleet status with a signed hold:\n%s", out)
	}
	out, _, _ = run(t, "fleet", "log", "app", "-c", h.cfg)
	if !strings.Contains(out, "hold     by alice (cli on ops-desk): signed") {
		t.Errorf("the audit log does not name the key as who:\n%s", out)
	}

	if out, errOut, code := run(t, "resume", "app", "--operator-key", key+".key", "-c", f.ops); code != 0 {
		t.Fatalf("resume: exit %d\n%s%s", code, out, errOut)
	}
	if log := f.once(); h.version() != "v2" {
		t.Fatalf("resumed, the agent did not install v2:\n%s", log)
	}
}
