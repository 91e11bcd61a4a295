package consul

import (
	"fmt"
	"strings"

	"github.com/dropshipd/dropship/fleet"
	lockconsul "github.com/dropshipd/dropship/lock/consul"
)

// AgentPolicy returns the Consul ACL rules of the agent on node (dropship's
// node_name) for services, under prefix: what it needs and no more. Consul
// has no per-node templates for key rules, so each host gets a policy of
// its own (`dropship fleet acl-policy agent` on the host prints it).
// consulNode is the Consul agent's node name, which Consul's session
// rules are keyed by ("" for any node).
//
// It may read every record of the prefix. It may write its own node
// record (an exact key, so "web-1" cannot write "web-10"), its own folder
// of the audit log (append, and trim its own events), the breaker and
// its nudge to the hosts at rest (fleet.RecordsChangedKey), the
// grants and the coordinator's document under _slots/, the semaphore of
// older agents kept in step by the coordinator, the plan a rollout fixes
// when it starts, and the run-once records. It may not write another
// host's record, holds, freezes, pins, approvals, clears, announcements,
// or another writer's audit events.
func AgentPolicy(prefix, node, consulNode string, services []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# dropship agent %q, for prefix %q (dropship fleet acl-policy agent)\n", node, prefix)
	rule := func(kind, key, policy, why string) {
		fmt.Fprintf(&b, "%s %q {\n  policy = %q  # %s\n}\n", kind, key, policy, why)
	}
	rule("key_prefix", prefix+"/", "read", "every record: rollouts, holds, announcements, the audit log")
	for _, svc := range services {
		rule("key", fleet.NodesKey(prefix, svc)+node, "write", "its own node record, "+svc)
		rule("key_prefix", fleet.AuditKey(prefix, svc)+keySafe(node)+"/", "write", "appends to the audit log, its own folder")
		rule("key_prefix", fleet.FailedKey(prefix, svc), "write", "trips the breaker")
		rule("key", fleet.RecordsChangedKey(prefix, svc), "write", "tells the hosts at rest that the breaker tripped")
		rule("key_prefix", lockconsul.SlotsPrefix(prefix, svc), "write", "its grant; the coordinator's document and grants")
		rule("key_prefix", fleet.LockKey(prefix, svc)+"/", "write", "the semaphore of older agents, kept in step")
		rule("key_prefix", fleet.RolloutKey(prefix, svc)+"plan/", "write", "the plan a rollout fixes when it starts")
		rule("key_prefix", fleet.OnceKey(prefix, svc), "write", "run-once hooks")
	}
	if consulNode == "" {
		rule("session_prefix", "", "write", "sessions of the grants, the coordinator, run-once hooks")
	} else {
		rule("session", consulNode, "write", "sessions on its Consul agent's node")
	}
	rule("node_prefix", "", "read", "sessions are tied to the local Consul agent's node")
	rule("event_prefix", "dropship-", "write", "only with the consul-event hook")
	return b.String()
}

// OperatorPolicy returns the Consul ACL rules of the operators' token
// (`dropship hold|resume|fleet …`, `fleet serve --allow-actions`): every
// record under prefix.
func OperatorPolicy(prefix string) string {
	return fmt.Sprintf(`# dropship operators, for prefix %[1]q (dropship fleet acl-policy operator)
key_prefix %[2]q {
  policy = "write"  # holds, freezes, pins, approvals, clears, forgetting hosts, trimming the audit log
}
node_prefix "" {
  policy = "read"
}
# dropship publish (a CI token) needs only:
#   key_prefix %[3]q { policy = "write" }
`, prefix, prefix+"/", fleet.PublishedPrefix(prefix))
}
