# A health-checked rolling deploy: hosts take turns through a semaphore in
# Consul, each bakes for a minute, and a release that fails its health
# check on one host stops there (the breaker) instead of rolling on.
state_path   = "/var/lib/dropship"
# node_name  = "web-3"                   # default: the hostname

repo "s3" { region = "eu-west-1" }

lock "consul" {
  address     = "127.0.0.1:8500"
  # token_file = "/etc/dropship.d/consul.token"  # a token with this host's policy
  #                                              # (dropship fleet acl-policy agent; see
  #                                              # consul-acl-agent.hcl), or CONSUL_HTTP_TOKEN
  # operator_keys = { alice = "/etc/dropship.d/keys/alice.pub" }  # act only on signed operators' records
  prefix      = "dropship"
  session_ttl = "15s"
}

service "api" {
  check_interval = "15s"
  sequential     = true   # take a slot in the fleet semaphore
  concurrency    = 1      # hosts updating at once
  hold           = "60s"  # keep the slot this long after success (bake time)

  artifact "s3" {
    bucket      = "releases"
    path        = "api/api.tar.gz"
    destination = "/srv/api"
  }

  before "script" { command = "systemctl stop api" }
  after  "script" { command = "systemctl start api" }

  check "http" {
    url           = "http://127.0.0.1:8080/health"
    body_contains = "ok"
    start_period  = "5s"
    retries       = 20
    interval      = "1s"
  }

  # Announcements run once the outcome is known: success, failure or rollback.
  after "graphite-event" {
    host = "http://graphite.internal"
    tags = "deploy"
    what = "{{.Result}}: {{.Name}} {{.Hash}} on {{.Hostname}}"
    data = "release {{.Release}}, previous {{.PreviousHash}}, took {{.Duration}}"
  }
  after "graphite-metric" { address = "graphite.internal:2003" }
  after "http" {
    url  = "https://hooks.slack.com/services/T000/B000/XXXX"
    json = { text = "{{.Name}} {{.Result}} on {{.Hostname}} ({{.Hash}}) {{.Error}}" }
  }

  rollback "script" { command = "logger -t dropship \"api rolled back on $DROPSHIP_HOSTNAME\"" }
}
