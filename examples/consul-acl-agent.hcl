# dropship agent "web-1", for prefix "dropship" (dropship fleet acl-policy agent)
key_prefix "dropship/" {
  policy = "read"  # every record: rollouts, holds, announcements, the audit log
}
key "dropship/api/nodes/web-1" {
  policy = "write"  # its own node record, api
}
key_prefix "dropship/api/audit/web-1/" {
  policy = "write"  # appends to the audit log, its own folder
}
key_prefix "dropship/api/failed/" {
  policy = "write"  # trips the breaker
}
key "dropship/_published/_records/api" {
  policy = "write"  # tells the hosts at rest that the breaker tripped
}
key_prefix "dropship/_slots/api/" {
  policy = "write"  # its grant; the coordinator's document and grants
}
key_prefix "dropship/api/lock/" {
  policy = "write"  # the semaphore of older agents, kept in step
}
key_prefix "dropship/api/rollout/plan/" {
  policy = "write"  # the plan a rollout fixes when it starts
}
key_prefix "dropship/api/once/" {
  policy = "write"  # run-once hooks
}
session_prefix "" {
  policy = "write"  # sessions of the grants, the coordinator, run-once hooks
}
node_prefix "" {
  policy = "read"  # sessions are tied to the local Consul agent's node
}
event_prefix "dropship-" {
  policy = "write"  # only with the consul-event hook
}
