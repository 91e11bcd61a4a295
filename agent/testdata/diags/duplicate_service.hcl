service "api" {
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
}

service "api" {
  artifact "file" {
    path        = "y.tar.gz"
    destination = "/srv/api2"
  }
}
