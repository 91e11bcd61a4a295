colour = "blue"

service "api" {
  artfact = "typo"
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
    mirror      = "nope"
  }
}
