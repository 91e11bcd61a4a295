# /etc/dropship.d/dropship.hcl — the agent file. It may hold credentials:
# keep it mode 0600. Services go in /etc/dropship.d/services/*.hcl, one or
# more per file; see /usr/share/doc/dropship/examples.
# After a change: `dropship validate`, then `systemctl reload dropship`.
service_path = "/etc/dropship.d/services"
state_path   = "/var/lib/dropship"

# repo "s3" {
#   region = "us-east-1"
# }

# lock "consul" {
#   address = "127.0.0.1:8500"
# }
