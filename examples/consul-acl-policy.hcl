# The least a dropship agent's Consul token needs, for prefix "dropship".
# Create it with:
#   consul acl policy create -name dropship -rules @consul-acl-policy.hcl
#   consul acl token create -policy-name dropship -description "dropship agents"
key_prefix "dropship/" {
  policy = "write"   # semaphore slots, node status, holds, breakers;
                     # read on dropship/_published/ for watch mode
}
session_prefix "" {
  policy = "write"   # the session that holds a slot
}
node_prefix "" {
  policy = "read"    # sessions are tied to the local agent's node
}
# Only with the consul-event hook:
event_prefix "dropship-" {
  policy = "write"
}

# `dropship publish` (a CI token) announces releases; it needs only:
#   key_prefix "dropship/_published/" { policy = "write" }
