service "api" {
  sequentialUpdates = true
  checkInterval     = "30s"
  updateTTL         = "1m"
  artifact "file" {
    path        = "x.tar.gz"
    destination = "/srv/api"
  }
}
