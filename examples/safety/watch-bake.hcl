# Health watched through a rollout's bake: every host of a wave probes its
# own health for the bake (ten minutes) after its switch, slot held. The
# next wave starts when the last host of this one reports healthy; a
# failure inside the window rolls the host back, counts toward max_failed
# and trips the breaker, and the next wave never starts.
state_path = "/var/lib/dropship"

lock "consul" {
  address = "127.0.0.1:8500"
}

service "api" {
  concurrency    = 2
  update_timeout = "30m"   # covers the watch: the watch is part of the update

  artifact "file" {
    path        = "/srv/releases/api.tar.gz"
    destination = "/srv/api"
  }

  rollout {
    canary     = 1
    waves      = ["10%", "100%"]
    bake       = "10m"
    max_failed = 1
  }

  before "script" { command = "systemctl stop api" }
  after  "script" { command = "systemctl start api" }

  check "http" {
    url      = "http://127.0.0.1:8080/health"
    retries  = 3
    interval = "1s"
    watch    = "bake"   # the rollout's bake, ten minutes
    failures = 2
  }
}
