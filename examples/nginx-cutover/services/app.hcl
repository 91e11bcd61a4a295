service "app" {
  check_interval = "20s"

  artifact "s3" {
    bucket      = "releases"
    path        = "app/app.tar.gz"
    destination = "/srv/app"
    region      = "us-east-1"
  }

  # Start the new release on the free port, wait for its health, switch
  # nginx, drain and stop the old one. A failure here rolls back: the
  # after hooks then run again for the previous release, which is still
  # running and still behind nginx, so cutover.sh leaves it be.
  after "script" {
    command = "/etc/dropship.d/cutover.sh"
    timeout = "3m"
    env = {
      PORTS          = "8081 8082"
      HEALTH_PATH    = "/health"
      NGINX_UPSTREAM = "/etc/nginx/conf.d/app-upstream.conf"
      DRAIN_SECONDS  = "30"
      # Without systemd as the service manager, replace what starts and
      # stops a release and reloads nginx (each gets the port as $1):
      # START_RELEASE = "setsid ./bin/app -port $1 >/var/log/app-$1.log 2>&1 </dev/null &"
      # STOP_RELEASE  = "pkill -f -- '-port $1'"
      # NGINX_TEST    = "nginx -t"
      # NGINX_RELOAD  = "nginx -s reload"
    }
  }

  # The proof that users get answers: through nginx, not the port.
  check "http" {
    url     = "http://127.0.0.1/health"
    retries = 10
  }
}
