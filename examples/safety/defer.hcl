# "Not now": the application holds updates back while it is busy (a batch
# job, an open trading session), up to a deadline.
#
# The application takes an flock on /run/worker/busy.lock while a job runs
# (from a shell: flock /run/worker/busy.lock ./run-job). While it holds it,
# the host defers the update: it reports "deferred" (status endpoint, fleet
# status, the dashboard, metrics), holds no fleet slot, and looks again
# every second. Once the lock is free the agent takes it for the length of
# the update, so no job starts in the middle of the switch.
state_path = "/var/lib/dropship"

lock "consul" {
  address = "127.0.0.1:8500"
}

service "worker" {
  sequential  = true
  concurrency = 2

  artifact "file" {
    path        = "/srv/releases/worker.tar.gz"
    destination = "/srv/worker"
  }

  defer {
    lock_file    = "/run/worker/busy.lock"
    # and/or a command: exit 0 to go on, 75 (EX_TEMPFAIL) for "not now"
    command      = "test \"$(curl -fsS localhost:9000/busy)\" = no || exit 75"
    timeout      = "10s"    # of the command (default 30s)
    interval     = "1s"     # how often to ask again (default)
    max_defer    = "2h"     # the deadline (default 1h)
    on_max_defer = "proceed" # then update anyway; "fail" fails the update instead
  }

  before "script" { command = "systemctl stop worker" }
  after  "script" { command = "systemctl start worker" }
}
