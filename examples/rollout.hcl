# A progressive rollout: one canary, then 10 %, 50 % and every host, each
# wave baked for 10 minutes while Prometheus says the error ratio stays
# under 1 %; the canary waits for a person; only on weekday office hours;
# on failure every host already updated goes back.
#
# The agent file of each host (/etc/dropship.d/dropship.hcl) names the
# host, its tags and the fleet; the service block below goes, the same, to
# every host of the service: hosts whose rollout blocks differ stop and
# say so (`dropship fleet status web`).

node_name = "web-07"
node_tags = ["eu"] # "canary" puts a host in the canary wave; waves may name tags ("tag:eu")

lock "consul" {
  address = "127.0.0.1:8500"
}

service "web" {
  sequential  = true
  concurrency = 5 # at most 5 hosts of a wave at once

  rollout {
    canary     = 1
    waves      = ["10%", "50%", "100%"]
    bake       = "10m"
    approve    = ["canary"] # `dropship fleet approve web` lets the canary go
    max_failed = 1
    on_failure = "revert"

    window {
      days     = "Mon-Fri"
      hours    = "09:00-16:00"
      timezone = "Europe/Berlin"
    }

    gate "prometheus" {
      address = "http://prometheus:9090"
      query   = "sum(rate(http_requests_total{job=\"web\",code=~\"5..\"}[5m])) / sum(rate(http_requests_total{job=\"web\"}[5m])) < 0.01"
      for     = "5m" # must hold for the last 5 minutes of each bake
    }
  }

  artifact "s3" {
    bucket      = "releases"
    path        = "web/web.tar.gz"
    destination = "/srv/web"
  }

  after "script" {
    command = "systemctl restart web"
  }

  check "http" {
    url     = "http://127.0.0.1:8080/healthz"
    retries = 10
  }

  after "graphite-event" {
    host = "http://graphite"
  }
}
