# Health watched through the bake: a release that passes its health check
# at the switch and starts failing within ten minutes is rolled back like
# one that failed at the switch. The host keeps its fleet slot for the
# whole window, so the next host starts only once this one has run healthy
# for ten minutes; a failure trips the breaker and the rest never start.
state_path = "/var/lib/dropship"

lock "consul" {
  address = "127.0.0.1:8500"
}

service "api" {
  sequential     = true
  concurrency    = 1
  update_timeout = "30m"   # covers the watch: the watch is part of the update

  artifact "file" {
    path        = "/srv/releases/api.tar.gz"
    destination = "/srv/api"
  }

  before "script" { command = "systemctl stop api" }
  after  "script" { command = "systemctl start api" }

  check "http" {
    url          = "http://127.0.0.1:8080/health"
    start_period = "5s"
    retries      = 3      # attempts per probe, 1s apart: one lost request is not a failed probe
    interval     = "1s"

    watch          = "10m"  # go on probing for ten minutes after the switch
    watch_interval = "5s"   # a probe every 5 s (default)
    failures       = 2      # two failed probes within the window roll back (default 1)
  }
}
