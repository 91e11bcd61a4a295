service "api" {
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
  after "script" {
    command    = "true"
    on_failure = "shrug"
  }
}
