service "api" {
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
  after "carrier-pigeon" {
    coop = "north"
  }
}
