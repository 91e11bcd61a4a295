# A database migration run once per release, by one host of the fleet.
# Every host updates at once (concurrency 10); the first to take the lock in
# Consul runs the migration, the others wait for its success, then install.
# If the host running it dies, another runs it again (once), with the same
# DROPSHIP_RUN_ID; a failure stops the release for every host (breaker).
state_path = "/var/lib/dropship"

lock "consul" {
  address = "127.0.0.1:8500"
}

service "api" {
  sequential  = true
  concurrency = 10

  artifact "file" {
    path        = "/srv/releases/api.tar.gz"
    destination = "/srv/api"
  }

  before "script" {
    once    = "fleet"
    timeout = "15m"   # the others wait up to twice this, and a minute
    # The migration records $DROPSHIP_RUN_ID in its own table and skips
    # what a run with the same id already did: a second run is then safe.
    command = "bin/migrate --run-id \"$DROPSHIP_RUN_ID\""
  }
  before "script" { command = "systemctl stop api" }
  after  "script" { command = "systemctl start api" }

  after "script" {
    once    = "fleet"
    command = "bin/notify-release \"$DROPSHIP_CHECKSUM\""  # once per release, never on a rollback
  }

  check "http" { url = "http://127.0.0.1:8080/health" }
}
