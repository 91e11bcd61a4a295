# Quick start: a local directory is the artifact store and the lock is
# local, so no cloud account is needed. Relative paths resolve against
# this file's directory. Run it with `make demo` from the repository root.
service_path = "services"
state_path   = "run/state"
node_name    = "quickstart"
