service "api" {
  check_interval = "10 parsecs"
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
  before "script" {
    command = "true"
    timeout = "soon"
  }
}
