# dropship operators, for prefix "dropship" (dropship fleet acl-policy operator)
key_prefix "dropship/" {
  policy = "write"  # holds, freezes, pins, approvals, clears, forgetting hosts, trimming the audit log
}
node_prefix "" {
  policy = "read"
}
# dropship publish (a CI token) needs only:
#   key_prefix "dropship/_published/" { policy = "write" }
