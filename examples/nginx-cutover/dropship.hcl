# Zero-downtime cut-over behind nginx: each release starts on a fresh port
# next to the running one; nginx is pointed at it and reloaded only when
# it is healthy; the old one is drained, then stopped. Nothing stops the
# old release before the new one serves.
service_path = "services"
state_path   = "/var/lib/dropship"
