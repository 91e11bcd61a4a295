service "api" {
  sequential  = "maybe"
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
}
