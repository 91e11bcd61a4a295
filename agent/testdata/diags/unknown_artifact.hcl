service "api" {
  artifact "ftp" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
}
