service "api" {
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
  before "script" {
    timeout = "5s"
  }
}
